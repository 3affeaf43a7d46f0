"""Image datamodules read tiny files written in the exact on-disk formats of the real datasets."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import CIFAR10, CIFAR100, MNIST, FashionMNIST, ImageFolder
from datamodules.images import IMAGENET_MEAN, IMAGENET_STD
from zoo.errors import ConfigError, DataError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">iiii", 2051, *images.shape) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder: str, gz: bool = False, n_train: int = 30, n_test: int = 10):
    """Idx-ubyte files as published; image i's first pixel encodes its label so order can be checked."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 3
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels * 50
        images[:, 0, 1] = 0
        blobs = {f"{prefix}-images-idx3-ubyte": _idx_images(images), f"{prefix}-labels-idx1-ubyte": _idx_labels(labels)}
        for name, blob in blobs.items():
            if gz:
                (raw / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "cls, folder, mean, std", [(MNIST, "MNIST", 0.1307, 0.3081), (FashionMNIST, "FashionMNIST", 0.2860, 0.3530)]
)
def test_mnist_family_reads_idx_files(tmp_path, cls, folder, mean, std, gz):
    written = write_mnist(tmp_path, folder, gz=gz)
    dm = cls(data_dir=str(tmp_path), download=False, val_split=0.2, batch_size=4)
    dm.setup()
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 10)
    # held in memory as uint8, normalised only on read
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.images.shape[1:] == (1, 28, 28)
    x, y = dm.test_set[4]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert x[0, 0, 1].item() == pytest.approx(-mean / std, abs=1e-5)
    test_images, test_labels = written["t10k"]
    expected = (torch.tensor(test_images[4], dtype=torch.float32) / 255 - mean) / std
    assert torch.allclose(x[0], expected, atol=1e-5)
    assert dm.test_set.labels.tolist() == test_labels.tolist()
    # train + val together are exactly the official training labels, split stratified
    seen = sorted(dm.train_set.labels.tolist() + dm.val_set.labels.tolist())
    assert seen == sorted(written["train"][1].tolist())
    assert sorted(dm.val_set.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    batch_x, batch_y = next(iter(dm.train_dataloader()))
    assert batch_x.shape == (4, 1, 28, 28) and batch_y.dtype == torch.long
    # each image still carries its own label in pixel (0, 0)
    first = (batch_x[:, 0, 0, 0] * std + mean) * 255
    assert torch.allclose(first, batch_y.float() * 50, atol=1e-3)


def test_mnist_as_rgb_at_a_backbone_input_size(tmp_path):
    """What a pretrained RGB backbone gets: grey repeated to 3 channels, resized, normalised with its statistics."""
    written = write_mnist(tmp_path, "MNIST")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    dm = MNIST(data_dir=str(tmp_path), download=False, image_size=32, channels=3, mean=mean, std=std)
    dm.setup()
    assert dm.input_shape == (3, 32, 32)
    x, _ = dm.test_set[4]
    grey = torch.tensor(written["t10k"][0][4], dtype=torch.float32)[None, None] / 255
    resized = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", antialias=True)[0, 0]
    for c in range(3):
        assert torch.allclose(x[c], (resized - mean[c]) / std[c], atol=1e-5)
    with pytest.raises(ConfigError, match=r"data.mean=\[0.5\] needs one value per channel \(3\)"):
        MNIST(data_dir=str(tmp_path), channels=3, mean=[0.5])


def test_mnist_split_is_seeded(tmp_path):
    write_mnist(tmp_path, "MNIST")

    def val_pixels(seed: int) -> torch.Tensor:
        dm = MNIST(data_dir=str(tmp_path), download=False, val_split=0.2, seed=seed)
        dm.setup()
        return dm.val_set.images

    assert torch.equal(val_pixels(1), val_pixels(1))
    assert not torch.equal(val_pixels(1), val_pixels(2))


def test_mnist_class_names():
    assert MNIST().class_names == [str(i) for i in range(10)]
    names = FashionMNIST().class_names
    assert len(names) == 10 and names[0] == "T-shirt/top" and names[-1] == "Ankle boot"


def test_mnist_missing_files_is_a_clear_error(tmp_path):
    with pytest.raises(DataError) as err:
        MNIST(data_dir=str(tmp_path), download=False).setup()
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(f in message for f in MNIST_FILES)
    assert "--data.download true" in message


def test_mnist_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(FashionMNIST, "_fetch", no_network)
    with pytest.raises(DataError, match="Downloading failed .*network unreachable") as err:
        FashionMNIST(data_dir=str(tmp_path), download=True).setup()
    assert str(tmp_path / "FashionMNIST" / "raw") in str(err.value)


def test_mnist_malformed_file_is_a_clear_error(tmp_path):
    write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="could not read the files"):
        MNIST(data_dir=str(tmp_path), download=False).setup()


def _cifar_batch(rng, n: int, n_classes: int, labels_key: str, bytes_keys: bool) -> tuple[dict, np.ndarray, np.ndarray]:
    labels = np.arange(n) % n_classes
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = 0  # red channel, pixel (0, 0)
    data[:, 1024] = 255  # green channel, pixel (0, 0)
    files = [f"{i}.png" for i in range(n)]
    batch = {"batch_label": "tiny", "data": data, labels_key: labels.tolist(), "filenames": files}
    if labels_key == "fine_labels":
        batch["coarse_labels"] = (labels // 5).tolist()
    if bytes_keys:  # what the published Python 2 pickles look like when read as bytes
        batch = {k.encode(): v for k, v in batch.items()}
    return batch, data, labels


def _dump(obj, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_reads_python_batches(tmp_path, bytes_keys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_labels = []
    for i in range(1, 6):
        batch, _, labels = _cifar_batch(rng, 10, 5, "labels", bytes_keys)
        _dump(batch, folder / f"data_batch_{i}")
        train_labels += labels.tolist()
    batch, test_data, test_labels = _cifar_batch(rng, 10, 5, "labels", bytes_keys)
    _dump(batch, folder / "test_batch")
    names = [f"class{i}" for i in range(10)]
    meta = {b"label_names": [n.encode() for n in names]} if bytes_keys else {"label_names": names}
    _dump(meta, folder / "batches.meta")

    dm = CIFAR10(data_dir=str(tmp_path), download=False, val_split=0.2)
    assert dm.num_classes == 10 and dm.input_shape == (3, 32, 32)
    dm.setup()
    assert dm.class_names == names
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 10)
    assert dm.train_set.images.dtype == torch.uint8
    assert dm.test_set.labels.tolist() == test_labels.tolist()
    assert sorted(dm.train_set.labels.tolist() + dm.val_set.labels.tolist()) == sorted(train_labels)
    x, y = dm.test_set[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.item() == test_labels[3]
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    assert x[0, 0, 0].item() == pytest.approx(-mean[0] / std[0], abs=1e-5)
    assert x[1, 0, 0].item() == pytest.approx((1 - mean[1]) / std[1], abs=1e-5)
    # rows are stored as R, G, B planes of 32x32
    raw = torch.tensor(test_data[3].reshape(3, 32, 32), dtype=torch.float32) / 255
    assert torch.allclose(x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1), raw, atol=1e-5)


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batch, _, train_labels = _cifar_batch(rng, 40, 20, "fine_labels", bytes_keys=False)
    _dump(batch, folder / "train")
    batch, _, test_labels = _cifar_batch(rng, 20, 20, "fine_labels", bytes_keys=False)
    _dump(batch, folder / "test")
    fine = [f"fine{i}" for i in range(100)]
    _dump({"fine_label_names": fine, "coarse_label_names": [f"coarse{i}" for i in range(20)]}, folder / "meta")

    dm = CIFAR100(data_dir=str(tmp_path), download=False, val_split=0.5, seed=3)
    dm.setup()
    assert dm.num_classes == 100 and dm.class_names == fine
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (20, 20, 20)
    assert dm.test_set.labels.tolist() == test_labels.tolist()  # fine labels, not coarse
    assert sorted(dm.val_set.labels.tolist()) == list(range(20))  # stratified: one of each
    x, _ = dm.train_set[0]
    assert x[0, 0, 0].item() == pytest.approx(-0.5071 / 0.2673, abs=1e-5)
    again = CIFAR100(data_dir=str(tmp_path), download=False, val_split=0.5, seed=3)
    again.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images)


def test_cifar_missing_files_and_unsafe_pickle(tmp_path):
    with pytest.raises(DataError) as err:
        CIFAR10(data_dir=str(tmp_path), download=False).setup()
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "data_batch_5" in str(err.value)
    assert "cifar-10-python.tar.gz" in str(err.value)

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        _dump({"fine_label_names": ["a"]}, folder / name)
    _dump({"data": Path("x"), "fine_labels": []}, folder / "train")  # a non-numpy global must not load
    with pytest.raises(DataError, match="refusing to load"):
        CIFAR100(data_dir=str(tmp_path), download=False).setup()


def _png(path: Path, value: int, size: tuple[int, int] = (10, 7)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


CLASSES = ["cat", "dog", "eel"]


def test_image_folder_single_folder(tmp_path):
    for c, name in enumerate(CLASSES):
        for i in range(10):
            _png(tmp_path / name / f"{i}.png", value=0 if c == 0 else 255)
    dm = ImageFolder(data_dir=str(tmp_path), image_size=16, val_split=0.2, test_split=0.2, batch_size=5)
    # known before setup: the CLI links it into the model first
    assert dm.num_classes == 3 and dm.class_names == CLASSES and dm.input_shape == (3, 16, 16)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 6, 6)
    assert sorted(dm.val_set[i][1] for i in range(6)) == [0, 0, 1, 1, 2, 2]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for img, label in zip(x, y):
        pixel = 0.0 if label == 0 else 1.0  # cats are black, the rest white
        assert torch.allclose(img, ((pixel - mean) / std).expand(3, 16, 16), atol=1e-5)
    again = ImageFolder(data_dir=str(tmp_path), image_size=16, val_split=0.2, test_split=0.2)
    again.setup()
    assert again.test_set.indices == dm.test_set.indices


def test_image_folder_split_layout_greyscale(tmp_path):
    for c, name in enumerate(CLASSES):
        for i in range(6):
            _png(tmp_path / "train" / name / f"{i}.png", value=40 * c)
        _png(tmp_path / "val" / name / "v.png", value=40 * c)
    _png(tmp_path / "test" / "dog" / "t0.png", value=40)  # test/ lacks cat and eel
    _png(tmp_path / "test" / "eel" / "t1.png", value=80)
    dm = ImageFolder(data_dir=str(tmp_path), image_size=8, channels=1, val_split=0.5, test_split=0.5)
    assert dm.num_classes == 3 and dm.input_shape == (1, 8, 8)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 3, 2)  # nothing carved
    assert [dm.test_set[i][1] for i in range(2)] == [1, 2]  # indices follow train/'s classes
    x, y = dm.val_set[2]
    assert x.shape == (1, 8, 8) and y == 2
    assert torch.allclose(x, torch.full((1, 8, 8), (80 / 255 - 0.5) / 0.5), atol=1e-5)


def test_image_folder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        ImageFolder(data_dir=str(missing)).num_classes
    assert str(missing) in str(err.value) and "<class>/<image>" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        ImageFolder(data_dir=str(tmp_path / "empty")).setup()
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="could not read"):
        ImageFolder(data_dir=str(tmp_path / "noimages")).setup()


# --- image files at real sizes: the reader, the resized cache -------------------------------------------------
def _photos(root: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """JPEGs of varied sizes with smooth content and noise (what a resize has work to do on), two classes."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        small = Image.fromarray(rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        noisy = np.asarray(small).astype(np.int16) + rng.integers(-10, 11, size=(h, w, 3))
        path = root / ("a" if i % 2 else "b") / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


SIZES = [(120, 90), (75, 140), (64, 64), (200, 150), (33, 47), (96, 128)]


def _all(dataset) -> tuple[torch.Tensor, list[int]]:
    pairs = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in pairs]), [int(y) for _, y in pairs]


def test_image_folder_reads_the_configured_size_normalised_as_pil_resizes(tmp_path):
    """What the model sees is unchanged: float32 (3, S, S), the file resized to S x S (bilinear, antialiased) and
    normalised by the mean and std; torch's uint8 resize is within one level of 255 of PIL's."""
    paths = _photos(tmp_path, SIZES)
    dm = ImageFolder(data_dir=str(tmp_path), image_size=48, val_split=0.0, test_split=0.0, num_workers=0)
    dm.setup("fit")
    files = dm.train_set.dataset
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i, (path, _) in enumerate(files.samples):
        x, y = files[i]
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and y == (0 if "/a/" in path else 1)
        with Image.open(path) as image:
            pil = np.array(image.convert("RGB").resize((48, 48), Image.BILINEAR))
        expected = (torch.from_numpy(pil).permute(2, 0, 1).float() / 255 - mean) / std
        assert (x - expected).abs().max().item() <= 1.01 / 255 / min(IMAGENET_STD)
        assert ((x - expected).abs() > 1e-5).float().mean() < 0.5  # most pixels are exactly PIL's
    assert sorted(str(p) for p in paths) == sorted(p for p, _ in files.samples)
    batch, labels = next(iter(dm.train_dataloader()))
    assert batch.shape == (6, 3, 48, 48) and batch.dtype == torch.float32 and labels.dtype == torch.long


def test_image_folder_defaults_to_a_worker_per_core_and_keeps_them(tmp_path):
    from datamodules.image_files import default_workers

    _photos(tmp_path, SIZES[:2])
    dm = ImageFolder(data_dir=str(tmp_path))
    assert dm.num_workers == default_workers() == min(8, len(os.sched_getaffinity(0)))
    assert ImageFolder(data_dir=str(tmp_path), num_workers=0).num_workers == 0


def test_resized_cache_gives_the_uncached_tensors_and_reads_a_changed_file_again(tmp_path):
    paths = _photos(tmp_path / "images", SIZES)
    kwargs = {"data_dir": str(tmp_path / "images"), "image_size": 40, "val_split": 0.0, "test_split": 0.0}
    plain = ImageFolder(**kwargs, num_workers=0)
    cached = ImageFolder(**kwargs, num_workers=0, cache_dir=str(tmp_path / "cache"))
    plain.setup("fit"), cached.setup("fit")
    expected, labels = _all(plain.train_set)
    first, first_labels = _all(cached.train_set)  # fills the cache
    files = cached.train_set.dataset
    read = []
    files._read = lambda path: read.append(path) or plain.train_set.dataset._read(path)  # counts decodes
    second, second_labels = _all(cached.train_set)  # from the cache
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert first_labels == second_labels == labels and read == []
    assert len(list((tmp_path / "cache").glob("*.pixels.npy"))) == 1

    # A file rewritten with other pixels is read again; the others still come from the cache.
    changed = sorted(paths)[2]
    Image.new("RGB", (30, 20), (255, 0, 0)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later edit, whatever the clock tick
    again, _ = _all(cached.train_set)
    fresh, _ = _all(plain.train_set)  # read from the files
    assert read == [str(changed)]
    row = [p for p, _ in files.samples].index(str(changed))
    assert not torch.equal(again[row], expected[row]) and torch.equal(again, fresh)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(again[row][:, 5, 5], red, atol=0.02)

    # Another size is another cache; a new folder instance finds the filled one.
    ImageFolder(**{**kwargs, "image_size": 24}, cache_dir=str(tmp_path / "cache"), num_workers=0).setup("fit")
    assert len(list((tmp_path / "cache").glob("*.pixels.npy"))) == 2
    reopened = ImageFolder(**kwargs, num_workers=0, cache_dir=str(tmp_path / "cache"))
    reopened.setup("fit")
    reopened.train_set.dataset._read = files._read
    assert torch.equal(_all(reopened.train_set)[0], fresh) and read == [str(changed)]


def test_resized_cache_is_filled_by_dataloader_workers(tmp_path):
    _photos(tmp_path / "images", SIZES)
    kwargs = {"data_dir": str(tmp_path / "images"), "image_size": 32, "val_split": 0.0, "test_split": 0.0}
    dm = ImageFolder(**kwargs, num_workers=2, batch_size=2, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    files = dm.train_set.dataset
    list(torch.utils.data.DataLoader(files, batch_size=2, num_workers=2))  # workers write the rows
    index = np.load(files.cache.index_path)
    assert index[:, 3].tolist() == [1] * len(SIZES)  # every row filled by some worker
    plain = ImageFolder(**kwargs, num_workers=0)
    plain.setup("fit")
    files._read = None  # every image now comes from the cache, read back in this process
    assert torch.equal(_all(dm.train_set)[0], _all(plain.train_set)[0])
