"""Image datamodules: scikit-learn's digits (ships with the install) and your own images (ImageFolder).

The torchvision classics (MNIST, Fashion-MNIST, CIFAR) are in :mod:`datamodules.torchvision_sets`.
"""

from __future__ import annotations

import copy
import os
from functools import cached_property
from typing import Any, Literal, Optional, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from datamodules.augment import Augmented, AugmentSpec, build_image_augment
from datamodules.base import BaselineData, ZooDataModule, capped, fit_standardizer, split_indices
from datamodules.image_files import ImageFiles, Normalise, default_workers, open_image
from datamodules.in_memory import BatchedTensorDataset
from zoo.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SplitDirs(TypedDict):
    """The folder of each split of an :class:`ImageFolder`; None where the split is carved from train's."""

    train: str
    val: Optional[str]
    test: Optional[str]


class Digits(ZooDataModule):
    """scikit-learn's handwritten digits: 1,797 grey 8x8 images of 0-9, shipped with scikit-learn.

    Pixels (0-16) are standardised with the training split's mean and std. Seeded, stratified
    train / val / test splits. ``classes`` and ``samples_per_class`` make transfer-learning setups from
    the same data: pretrain on digits 0-4, then fine-tune on 5-9 with a few labelled images each.

    Args:
        classes: keep only these digits, relabelled ``0..len(classes)-1`` in the given order (default: all).
        samples_per_class: keep only this many training images of each class (seeded); validation and
            test splits keep their size, so few-shot runs are measured on the same images.
        augment: image augmentations of the training split by name (:mod:`datamodules.augment`); they see
            the 8x8 grey pixels scaled to [0, 1], before standardisation. They run on whole training batches on
            the batch's device, each image with its own parameters (:mod:`datamodules.augment_batch`).
        mixup_alpha, cutmix_alpha, mix_prob: MixUp / CutMix of training batches.
        (the rest as in :class:`~datamodules.base.ZooDataModule`)
    """

    def __init__(
        self,
        classes: Optional[list[int]] = None,
        samples_per_class: Optional[int] = None,
        batch_size: int = 64,
        num_workers: int = 0,
        drop_last: bool = False,
        val_split: float = 0.1,
        test_split: float = 0.2,
        seed: int = 42,
        num_classes: Optional[int] = None,
        augment: Optional[list[AugmentSpec]] = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
    ) -> None:
        super().__init__(
            "data",
            batch_size,
            num_workers,
            val_split,
            test_split,
            seed,
            num_classes,
            augment=augment,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            mix_prob=mix_prob,
            drop_last=drop_last,
        )
        self.image_augment = build_image_augment(self.augment, (8, 8), channels=1, owner="Digits", per_batch=True)
        if classes is not None:
            bad = [c for c in classes if c not in range(10)]
            if bad or len(set(classes)) != len(classes) or len(classes) < 2:
                raise ConfigError(f"data.classes={classes} must be at least 2 distinct digits from 0 to 9")
        if samples_per_class is not None and samples_per_class < 1:
            raise ConfigError(f"data.samples_per_class={samples_per_class} must be at least 1")
        self.classes = list(classes) if classes is not None else list(range(10))
        self.samples_per_class = samples_per_class
        self.stats: Optional[dict[str, float]] = None  # the training pixels' mean and std, set by build()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    def _num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.classes]

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        keep = np.isin(digits.target, self.classes)
        relabel = {digit: i for i, digit in enumerate(self.classes)}
        x = torch.tensor(digits.images[keep], dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
        labels = np.array([relabel[t] for t in digits.target[keep]])
        y = torch.tensor(labels, dtype=torch.long)
        train, val, test = split_indices(len(y), self.val_split, self.test_split, self.seed, stratify=labels)
        if self.samples_per_class is not None:
            train = self._few_per_class(train, labels, self.samples_per_class)
        mean, std = fit_standardizer(x[train], dim=(0, 2, 3))
        self.stats = {"mean": float(mean), "std": float(std)}  # kept in checkpoints, for new images
        augment = self.image_augment
        # (16 p - mean) / std, for p = pixel / 16 in [0, 1]: the normalisation as the augmentations see it
        pixels_mean, pixels_std = [self.stats["mean"] / 16.0], [self.stats["std"] / 16.0]
        per_sample = None
        if augment is not None and augment.per_sample:
            per_sample = self._augmented(x[train], y[train], pixels_mean, pixels_std)
        self.batch_augment = augment.batched(pixels_mean, pixels_std) if augment is not None else None
        x = (x - mean) / std
        # The baselines learn from what the model may use: train + validation, except in a few-shot setup, whose
        # point is how few labelled images there are (its validation split only selects the checkpoint).
        learn = train if self.samples_per_class is not None else np.sort(np.concatenate([train, val]))
        self._baseline = BaselineData("image", x[learn].numpy(), y[learn].numpy(), x[test].numpy(), y[test].numpy())
        train_set, val_set, test_set = (BatchedTensorDataset(x[i], y[i]) for i in (train, val, test))
        return per_sample or train_set, val_set, test_set

    def baseline_data(self) -> BaselineData:
        """The standardised images of train + validation (train only with ``samples_per_class``) and of the test
        split, unaugmented."""
        if getattr(self, "_baseline", None) is None:
            self.setup("test")
        return self._baseline

    def _augmented(self, x: torch.Tensor, y: torch.Tensor, mean: list[float], std: list[float]) -> Dataset:
        """Training images augmented on read, by the augmentations that run per sample: pixels scaled from 0-16
        to [0, 1] (the range torchvision's colour operations assume), augmented, then standardised by ``mean``
        and ``std`` in those units (the other splits' statistics)."""
        from torchvision.transforms import v2

        normalise = v2.Normalize(mean, std)
        augment = self.image_augment.around(normalise)  # type: ignore[union-attr]  # build calls this with one
        return Augmented(TensorDataset(x / 16.0, y), augment)

    def state_dict(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "stats": self.stats}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stats = state_dict.get("stats")

    def predict_inputs(self, path: str) -> tuple[Dataset, list[str]]:
        """Image files (or a folder of them) as 8x8 grey digits: dark ink on light paper is inverted to the
        data's light-on-dark, pixels scaled to the data's 0-16 and standardised like the training images."""
        if not self.stats:
            raise DataError("Digits: no training statistics; predict from a checkpoint that `zoo fit` wrote")
        images, names = read_images(path, channels=1, size=(8, 8))
        x = images.float() / 255.0 * 16.0
        light_background = x.mean(dim=(1, 2, 3)) > 8.0
        x[light_background] = 16.0 - x[light_background]
        x = (x - self.stats["mean"]) / self.stats["std"]
        return BatchedTensorDataset(x, torch.zeros(len(x), dtype=torch.long)), names

    def _few_per_class(self, train: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        picked = []
        for label in range(len(self.classes)):
            pool = train[labels[train] == label]
            if len(pool) < per_class:
                raise DataError(
                    f"data.samples_per_class={per_class} but digit {self.classes[label]} has only "
                    f"{len(pool)} training images"
                )
            picked.append(rng.choice(pool, size=per_class, replace=False))
        return np.sort(np.concatenate(picked))


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_files(path: str) -> list[str]:
    """An image file, or every image file under a folder (sorted); a clear error for anything else."""
    if os.path.isfile(path):
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(
                f"{path}: this model reads images; give an image file ({', '.join(IMAGE_EXTENSIONS)}) "
                "or a folder of them"
            )
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{os.path.abspath(path)}: no such file or folder")
    files = sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise DataError(f"{os.path.abspath(path)}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


# Headers of up to this many files are read before training; a larger folder is checked as it is read.
MAX_CHECKED_FILES = 100_000


def _check_readable(samples: list[tuple[str, int]]) -> None:
    """Every image's header opens (a few ms per thousand files): a corrupt or non-image file is named before
    training, not hours into it."""
    if len(samples) > MAX_CHECKED_FILES:
        return
    from PIL import Image, UnidentifiedImageError

    for path, _ in samples:
        try:
            with Image.open(path):
                pass
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"{path}: not a readable image ({err}); remove or replace it") from None


def read_images(path: str, channels: int, size: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    """Image files as ``(N, channels, H, W)`` uint8, resized (bilinear, antialiased), with their paths."""
    from PIL import Image

    files = image_files(path)
    arrays = [np.asarray(open_image(f, channels).resize((size[1], size[0]), Image.BILINEAR)) for f in files]
    x = torch.from_numpy(np.stack(arrays))
    return (x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2)).contiguous(), files


class ImageFolder(ZooDataModule):
    """Your own images, one folder per class (torchvision's ImageFolder layout).

    ``data_dir/<class>/<image>``: seeded, stratified train / val / test splits are carved from it.
    ``data_dir/train/<class>/<image>`` with optional ``val/`` and ``test/`` beside it: those folders
    are the splits, and a split without its folder is carved from ``train/``. Class indices follow
    the sorted folder names of the training folder. Images are resized to ``image_size`` squared and
    normalised when read.

    Args:
        data_dir: the root folder described above.
        image_size: side of the square every image is resized to; None: a pretrained backbone's input size
            (the CLI passes it), else 64.
        channels: 3 reads RGB, 1 converts to greyscale.
        mean: per-channel normalisation mean (pixel / 255); ImageNet's for RGB, 0.5 for greyscale.
        std: per-channel normalisation std; ImageNet's for RGB, 0.5 for greyscale.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (kept alive between epochs); None: one per CPU core, at most 8
            (:func:`~datamodules.image_files.default_workers`): decoding and resizing images is most of the work.
        val_split: fraction carved for validation when there is no ``val/`` folder.
        test_split: fraction carved for testing when there is no ``test/`` folder.
        seed: seeds the carved splits.
        num_classes: optional check of the number of class folders.
        augment: image augmentations of the training split by name (:mod:`datamodules.augment`); they see the
            resized uint8 image, before normalisation.
        mixup_alpha: MixUp of training batches, ``lam ~ Beta(alpha, alpha)``; 0 is off.
        cutmix_alpha: CutMix of training batches; 0 is off.
        mix_prob: probability that a training batch is mixed.
        cache_dir: keep the resized images (uint8) in memory-mapped files in this folder: the first epoch fills
            them, later epochs read them instead of decoding and resizing (:class:`~datamodules.image_files.
            ResizedCache`; a changed file is read again). It takes ``channels * image_size**2`` bytes of disk
            per image (150 KB at 224). None: every epoch reads the files.
        draft: JPEGs at least twice ``image_size`` a side are decoded at a reduced scale (1/2 to 1/8) before the
            resize (PIL's draft mode): faster on large photos, and the pixels differ slightly from a full decode
            (a different downscaling filter), so it is off by default.
    """

    def __init__(
        self,
        data_dir: str = "data",
        image_size: Optional[int] = None,
        channels: Literal[1, 3] = 3,
        mean: Optional[list[float]] = None,
        std: Optional[list[float]] = None,
        batch_size: int = 64,
        num_workers: Optional[int] = None,
        drop_last: bool = False,
        val_split: float = 0.1,
        test_split: float = 0.2,
        seed: int = 42,
        num_classes: Optional[int] = None,
        augment: Optional[list[AugmentSpec]] = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        cache_dir: Optional[str] = None,
        draft: bool = False,
    ) -> None:
        super().__init__(
            data_dir,
            batch_size,
            default_workers() if num_workers is None else num_workers,
            val_split,
            test_split,
            seed,
            num_classes,
            augment=augment,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            mix_prob=mix_prob,
            drop_last=drop_last,
        )
        self.cache_dir, self.draft = cache_dir, draft
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels} must be 1 (greyscale) or 3 (RGB)")
        image_size = 64 if image_size is None else image_size
        if image_size < 1:
            raise ConfigError(f"data.image_size={image_size} must be at least 1")
        size = (image_size, image_size)
        self.image_augment = build_image_augment(self.augment, size, channels, owner="ImageFolder")
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        self.image_size = image_size
        self.channels = channels
        self.mean = list(mean) if mean is not None else list(default_mean)
        self.std = list(std) if std is not None else list(default_std)
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels:
                raise ConfigError(f"data.{name}={values} needs one value per channel ({channels})")

    def _layout_error(self, problem: str) -> DataError:
        return DataError(
            f"ImageFolder: {problem}. Expected {self.data_dir}/<class>/<image> (one folder per class), "
            f"or {self.data_dir}/train/<class>/<image> with optional val/ and test/ beside train/"
        )

    @cached_property
    def split_dirs(self) -> SplitDirs:
        """The folder of each split, or None where the split is carved from the training folder."""
        if not os.path.isdir(self.data_dir):
            raise self._layout_error(f"{os.path.abspath(self.data_dir)} does not exist or is not a folder")
        train = os.path.join(self.data_dir, "train")
        if not os.path.isdir(train):
            return {"train": self.data_dir, "val": None, "test": None}
        val, test = (os.path.join(self.data_dir, s) for s in ("val", "test"))
        return {
            "train": train,
            "val": val if os.path.isdir(val) else None,
            "test": test if os.path.isdir(test) else None,
        }

    @cached_property
    def class_names(self) -> list[str]:
        root = self.split_dirs["train"]
        names = sorted(e.name for e in os.scandir(root) if e.is_dir())  # the order torchvision uses
        if not names:
            raise self._layout_error(f"no class folders in {os.path.abspath(root)}")
        return names

    def _num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    def _normalise(self):  # noqa: ANN202
        """uint8 ``(C, H, W)`` to float in [0, 1], normalised by the data's mean and std."""
        return Normalise(self.mean, self.std)

    def _train_transform(self):  # noqa: ANN202
        """The same normalisation, with the augmentations around it: they see the resized uint8 image (the pixels
        colour operations expect), random erasing the normalised one."""
        return self.image_augment.around(self._normalise())

    def _files(self, samples: list[tuple[str, int]], side: Optional[int] = None) -> ImageFiles:
        """These files read at ``side`` (default: image_size) and normalised, through the cache where there is one."""
        side = self.image_size if side is None else side
        cache = self.cache_dir if side == self.image_size else None
        normalise = self._normalise()
        return ImageFiles(samples, self.class_names, side, self.channels, normalise, self.draft, cache_dir=cache)

    def _folder(self, root: str) -> ImageFiles:
        from torchvision import datasets

        try:
            ds = datasets.ImageFolder(root, loader=str)  # finds the classes and files; ImageFiles reads them
        except (OSError, RuntimeError) as e:
            raise self._layout_error(f"could not read {os.path.abspath(root)}: {e}") from e
        _check_readable(ds.samples)
        samples = list(ds.samples)
        if ds.classes != self.class_names:
            # A val/ or test/ folder may lack some classes: map its indices onto train/'s.
            unknown = sorted(set(ds.classes) - set(self.class_names))
            if unknown:
                raise DataError(f"ImageFolder: {os.path.abspath(root)} has classes {unknown} that train/ lacks")
            to_idx = {c: i for i, c in enumerate(self.class_names)}
            samples = [(path, to_idx[ds.classes[t]]) for path, t in samples]
        return self._files(samples)

    def baseline_data(self) -> BaselineData:
        """Train + validation images (a seeded subsample of at most 10,000) and the test split, normalised as the
        model's, at most 32x32 (a pixel baseline gains little from more pixels, and 10,000 images at 224x224
        would take 6 GB)."""
        if self.train_set is None:
            self.setup("test")
        learn = _samples(self.train_set) + _samples(self.val_set)
        learn = [learn[i] for i in capped(len(learn), self.seed, what="ImageFolder baseline")]
        side = min(self.image_size, 32)

        def read(samples: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
            dataset = self._files(samples, side)
            loader = DataLoader(dataset, batch_size=256, num_workers=self.num_workers)
            x = torch.cat([batch for batch, _ in loader]) if samples else torch.zeros(0, self.channels, side, side)
            return x.numpy(), np.array([label for _, label in samples], dtype=np.int64)

        return BaselineData("image", *read(learn), *read(_samples(self.test_set)))

    def predict_inputs(self, path: str) -> tuple[Dataset, list[str]]:
        """Image files (or a folder of them, read recursively) through the same resize and normalisation."""
        files = image_files(path)
        return self._files([(f, 0) for f in files]), files

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        dirs = self.split_dirs
        full = self._folder(dirs["train"])
        val_frac = self.val_split if dirs["val"] is None else 0.0
        test_frac = self.test_split if dirs["test"] is None else 0.0
        train, val, test = split_indices(len(full), val_frac, test_frac, self.seed, stratify=full.targets)
        train_source = full
        if self.image_augment is not None:  # the same files; only the training split's copy augments
            train_source = copy.copy(full)
            train_source.transform = self._train_transform()
        return (
            Subset(train_source, train.tolist()),
            Subset(full, val.tolist()) if dirs["val"] is None else self._folder(dirs["val"]),
            Subset(full, test.tolist()) if dirs["test"] is None else self._folder(dirs["test"]),
        )


def _samples(dataset: Optional[Dataset]) -> list[tuple[str, int]]:
    """The ``(path, class index)`` of every image of a split: :class:`ImageFiles` or a Subset of them."""
    if dataset is None:
        return []
    if isinstance(dataset, Subset):
        return [dataset.dataset.samples[i] for i in dataset.indices]
    return list(dataset.samples)
