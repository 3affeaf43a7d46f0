"""The torchvision classics: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, held in memory as uint8.

Each reads the standard files from ``data_dir`` (downloading them once where allowed), splits the
official training set into seeded, stratified train / val splits and keeps the official test set.
Batches are read at once (:class:`~datamodules.in_memory.UInt8Images`) and augmented on their device.
"""

from __future__ import annotations

import os
import pickle
import socket
from contextlib import contextmanager
from functools import cached_property, partial
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.augment import AugmentSpec, build_image_augment
from datamodules.base import BaselineData, ZooDataModule, capped, split_indices
from datamodules.in_memory import UInt8Images
from zoo.errors import ConfigError, DataError

DOWNLOAD_TIMEOUT_S = 20.0


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision's urlopen has no timeout of its own: without this a dead network hangs forever.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


class _Classic(ZooDataModule):
    """Shared behaviour: find or download the files, split the official train set, normalise on read."""

    name: str = ""  # as torchvision spells it
    files: tuple[str, ...] = ()  # what must be in ``directory``
    mean: Sequence[float] = ()  # the dataset's statistics; an instance holds the ones it normalises with
    std: Sequence[float] = ()
    shape: tuple[int, int, int] = (1, 1, 1)
    n_classes: int = 0

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        image_size: Optional[int] = None,
        channels: Optional[int] = None,
        mean: Optional[list[float]] = None,
        std: Optional[list[float]] = None,
        batch_size: int = 64,
        num_workers: int = 0,
        drop_last: bool = False,
        val_split: float = 0.1,
        seed: int = 42,
        num_classes: Optional[int] = None,
        augment: Optional[list[AugmentSpec]] = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
    ) -> None:
        super().__init__(
            data_dir,
            batch_size,
            num_workers,
            val_split,
            0.0,
            seed,
            num_classes,
            augment=augment,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            mix_prob=mix_prob,
            drop_last=drop_last,
        )
        self.download = download
        if image_size is not None and image_size < 1:
            raise ConfigError(f"data.image_size={image_size} must be at least 1")
        if channels not in (None, 1, 3):
            raise ConfigError(f"data.channels={channels} must be 1 (greyscale) or 3 (RGB)")
        self.image_size = image_size
        self.channels = channels or self.shape[0]
        # Parameters in pixels of the stored images. Per sample, they see the stored uint8 pixels, before any
        # resize or channel conversion; per batch (most), the normalised batch the model gets, on its device.
        self.image_augment = build_image_augment(
            self.augment,
            self.shape[1:],
            self.shape[0],
            type(self).__name__,
            per_batch=True,
            sample_channels=self.channels,
        )
        # A pretrained backbone's own statistics (the CLI passes them) replace the dataset's.
        converted = self.channels != self.shape[0]
        self.mean = list(mean) if mean is not None else _fit_channels(type(self).mean, self.channels, converted)
        self.std = list(std) if std is not None else _fit_channels(type(self).std, self.channels, converted)
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels:
                raise ConfigError(f"data.{name}={values} needs one value per channel ({self.channels})")
        self.batch_augment = self.image_augment.batched(self.mean, self.std) if self.image_augment else None

    @property
    def directory(self) -> str:
        """The folder the dataset's files are read from."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        side = self.image_size
        return (self.channels, side or self.shape[1], side or self.shape[2])

    def _num_classes(self) -> int:
        return self.n_classes

    def _missing(self) -> list[str]:
        return [f for f in self.files if not os.path.isfile(os.path.join(self.directory, f))]

    def _fetch(self) -> None:
        """Download the files into ``directory``."""
        raise NotImplementedError

    def _missing_hint(self) -> str:
        return ""

    def _ensure_files(self) -> None:
        missing = self._missing()
        failure = ""
        if missing and self.download:
            try:
                with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                    self._fetch()
            except Exception as e:  # noqa: BLE001  (any network or archive failure becomes the message below)
                failure = f"Downloading failed ({type(e).__name__}: {' '.join(str(e).split())[:300]}). "
            missing = self._missing()
        if missing:
            raise DataError(
                f"{type(self).__name__}: dataset files not found in {os.path.abspath(self.directory)}. {failure}"
                f"Expected: {', '.join(self.files)}{self._missing_hint()}; missing: {', '.join(missing)}. "
                "Place the files there, or run with --data.download true on a machine with internet access."
            )

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup, so DDP ranks do not all download.
        self._ensure_files()

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(train_images, train_labels, test_images, test_labels)``; images uint8 ``(N, C, H, W)``."""
        raise NotImplementedError

    def predict_inputs(self, path: str) -> tuple[Dataset, list[str]]:
        """Image files (or a folder of them) read as the dataset's images and prepared the same way."""
        from datamodules.images import read_images

        images, names = read_images(path, channels=self.shape[0], size=self.shape[1:])
        shape = self.input_shape
        labels = torch.zeros(len(images), dtype=torch.long)
        return UInt8Images(images, labels, self.mean, self.std, shape[0], (shape[1], shape[2])), names

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        self._ensure_files()
        x, y, test_x, test_y = self._load()
        where = f"{type(self).__name__} ({os.path.abspath(self.directory)})"
        for images, labels in ((x, y), (test_x, test_y)):
            if len(images) != len(labels):
                raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.n_classes:
                raise DataError(f"{where}: labels fall outside 0..{self.n_classes - 1}")
        train, val, _ = split_indices(len(y), self.val_split, 0.0, self.seed, stratify=y.numpy())
        shape = self.input_shape
        read = partial(UInt8Images, mean=self.mean, std=self.std, channels=shape[0], size=(shape[1], shape[2]))
        return read(x[train], y[train], augment=self.image_augment), read(x[val], y[val]), read(test_x, test_y)

    def baseline_data(self) -> BaselineData:
        """Train + validation images (a seeded subsample of at most 10,000) and the whole test split, normalised
        as the model's, at the stored size (no resize to a pretrained backbone's input size) and unaugmented."""
        if self.train_set is None:
            self.setup("test")
        parts = [self.train_set, self.val_set]  # UInt8Images, set by setup (the checker sees Optional[Dataset])
        images = torch.cat([p.images for p in parts])  # type: ignore[union-attr]
        labels = torch.cat([p.labels for p in parts])  # type: ignore[union-attr]
        keep = torch.as_tensor(capped(len(labels), self.seed, what=f"{type(self).__name__} baseline"))

        def prepared(images: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            dataset = UInt8Images(images, labels, self.mean, self.std, self.channels)
            chunks = [range(i, min(i + 1000, len(dataset))) for i in range(0, len(dataset), 1000)]
            return torch.cat([dataset.__getitems__(c).fields[0] for c in chunks]).numpy(), labels.numpy()

        test: UInt8Images = self.test_set  # type: ignore[assignment]  # as parts above
        return BaselineData("image", *prepared(images[keep], labels[keep]), *prepared(test.images, test.labels))


def _fit_channels(values: Sequence[float], channels: int, converted: bool) -> list[float]:
    """A dataset's per-channel statistics for ``channels`` channels (repeated or averaged when converted)."""
    if not converted:
        return list(values)
    return [sum(values) / len(values)] * channels if channels == 1 else [values[0]] * channels


class MNIST(_Classic):
    """MNIST handwritten digits: 60,000 training and 10,000 test grey 28x28 images of 0-9.

    Reads torchvision's layout, ``<data_dir>/MNIST/raw/`` with the four idx-ubyte files (plain or
    ``.gz``), through torchvision's own reader. The official training set is split into train / val;
    the official test set is the test split. Pixels are normalised with the standard mean and std.

    Args:
        data_dir: the folder holding ``MNIST/raw/`` (the same ``root`` torchvision takes).
        download: download missing files (20 s network timeout); off, missing files are an error.
        image_size: resize to this square side when read (a pretrained backbone's input size); None keeps it.
        channels: 1 or 3; grey images are repeated to 3 channels for RGB backbones. None keeps the data's.
        mean: per-channel normalisation mean (pixel / 255); None uses the dataset's own statistics.
        std: per-channel normalisation std; None uses the dataset's own.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        val_split: fraction of the official training set held out for validation.
        seed: seeds the split.
        num_classes: optional check of the number of classes (10).
        augment, mixup_alpha, cutmix_alpha, mix_prob: training augmentation (:mod:`datamodules.augment`),
            on the stored 28x28 uint8 pixels; MixUp / CutMix of training batches.
    """

    name = "MNIST"
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    mean = (0.1307,)
    std = (0.3081,)
    shape = (1, 28, 28)
    n_classes = 10

    @property
    def directory(self) -> str:
        return os.path.join(self.data_dir, self.name, "raw")

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def _missing(self) -> list[str]:
        return [f for f in super()._missing() if not os.path.isfile(os.path.join(self.directory, f + ".gz"))]

    def _missing_hint(self) -> str:
        return " (each plain or .gz)"

    def _fetch(self) -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, self.name)(self.data_dir, train=True, download=True)

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        import torchvision.datasets
        from torchvision.datasets.utils import extract_archive

        dataset_cls = getattr(torchvision.datasets, self.name)
        try:
            # torchvision reads only the plain files; unpack any .gz a user placed there, as its download does.
            for f in self.files:
                path = os.path.join(self.directory, f)
                if not os.path.isfile(path):
                    extract_archive(path + ".gz")
            train = dataset_cls(self.data_dir, train=True, download=False)
            test = dataset_cls(self.data_dir, train=False, download=False)
        except Exception as e:  # noqa: BLE001  (torchvision signals a malformed file with assert / TypeError)
            raise DataError(
                f"{type(self).__name__}: could not read the files in {os.path.abspath(self.directory)} "
                f"({type(e).__name__}: {e}); delete them and download again"
            ) from e
        return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets


class FashionMNIST(MNIST):
    """Zalando's Fashion-MNIST: 60,000 training and 10,000 test grey 28x28 images of 10 garments.

    The same files, layout (``<data_dir>/FashionMNIST/raw/``) and arguments as :class:`MNIST`.
    """

    name = "FashionMNIST"
    mean = (0.2860,)
    std = (0.3530,)

    @property
    def class_names(self) -> list[str]:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        return list(TorchvisionFashionMNIST.classes)


class _SafeUnpickler(pickle.Unpickler):
    # The CIFAR files are pickles; allowing only numpy's array globals means a tampered file
    # cannot run code on load.
    _allowed = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
        *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def _text(key: object) -> object:
    return key.decode("latin1") if isinstance(key, bytes) else key


def _unpickle(path: str) -> dict:
    """One CIFAR file as a dict with str keys, whether written by Python 2 (str keys) or 3 (bytes keys)."""
    try:
        with open(path, "rb") as f:
            raw = _SafeUnpickler(f, encoding="latin1").load()
        return {_text(k): v for k, v in raw.items()}
    except Exception as e:  # noqa: BLE001
        raise DataError(f"could not read the CIFAR file {os.path.abspath(path)} ({type(e).__name__}: {e})") from e


class CIFAR10(_Classic):
    """CIFAR-10: 50,000 training and 10,000 test colour 32x32 images of 10 classes.

    Reads the "CIFAR python version" files from ``<data_dir>/cifar-10-batches-py/``: ``data_batch_1``
    to ``data_batch_5``, ``test_batch`` and ``batches.meta``. The official training set is split into
    train / val; the official test set is the test split. Pixels are normalised per channel with the
    standard mean and std.

    Args:
        data_dir: the folder holding ``cifar-10-batches-py/`` (the same ``root`` torchvision takes).
        download: download and unpack the official archive (20 s network timeout) when files are missing.
        image_size: resize to this square side when read (a pretrained backbone's input size); None keeps it.
        channels: 1 or 3; grey images are repeated to 3 channels for RGB backbones. None keeps the data's.
        mean: per-channel normalisation mean (pixel / 255); None uses the dataset's own statistics.
        std: per-channel normalisation std; None uses the dataset's own.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        val_split: fraction of the official training set held out for validation.
        seed: seeds the split.
        num_classes: optional check of the number of classes.
        augment, mixup_alpha, cutmix_alpha, mix_prob: training augmentation (:mod:`datamodules.augment`),
            on the stored 32x32 uint8 pixels (``[random_crop, hflip]`` is CIFAR's standard); MixUp / CutMix.
    """

    name = "CIFAR10"
    folder = "cifar-10-batches-py"
    train_files: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: tuple[str, ...] = ("test_batch",)
    meta_file, names_key, labels_key = "batches.meta", "label_names", "labels"
    files = (*train_files, *test_files, meta_file)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    shape = (3, 32, 32)
    n_classes = 10

    @property
    def directory(self) -> str:
        return os.path.join(self.data_dir, self.folder)

    @cached_property
    def class_names(self) -> list[str]:
        self._ensure_files()
        names = _unpickle(os.path.join(self.directory, self.meta_file))[self.names_key]
        return [str(_text(n)) for n in names]

    def _fetch(self) -> None:
        import torchvision.datasets
        from torchvision.datasets.utils import download_and_extract_archive

        source = getattr(torchvision.datasets, self.name)
        download_and_extract_archive(source.url, self.data_dir, filename=source.filename, md5=source.tgz_md5)

    def _missing_hint(self) -> str:
        import torchvision.datasets

        return f" (as unpacked from {getattr(torchvision.datasets, self.name).filename})"

    def _read(self, files: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for f in files:
            batch = _unpickle(os.path.join(self.directory, f))
            if "data" not in batch or self.labels_key not in batch:
                raise DataError(f"{os.path.join(self.directory, f)} lacks 'data' or '{self.labels_key}'")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(f"{os.path.join(self.directory, f)}: data is {data.shape}, expected (N, 3072)")
            images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))  # rows are R, G, B planes
            labels.append(torch.as_tensor(np.asarray(batch[self.labels_key], dtype=np.int64)))
        return torch.cat(images), torch.cat(labels)

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (*self._read(self.train_files), *self._read(self.test_files))


class CIFAR100(CIFAR10):
    """CIFAR-100: 50,000 training and 10,000 test colour 32x32 images of 100 fine classes.

    Reads ``train``, ``test`` and ``meta`` from ``<data_dir>/cifar-100-python/``; labels are the
    ``fine_labels``. The same arguments as :class:`CIFAR10`.
    """

    name = "CIFAR100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file, names_key, labels_key = "meta", "fine_label_names", "fine_labels"
    files = (*train_files, *test_files, meta_file)
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    n_classes = 100
