"""Image files read at a model's input size, and a disk cache of the resized images for later epochs.

Reading a JPEG of a few hundred pixels and resizing it to 224x224 is most of the time a CPU spends on an
image folder (``python -m benchmarks --only dataloading``). Per image of about 400x400 on one core: decoding
takes 1.6 ms with torchvision's libjpeg-turbo decoder (2.3 ms with PIL's, the same pixels); torch's uint8
kernel resizes (bilinear, antialiased) in 0.5 ms where PIL's own resize takes 2.4 ms, within one level of 255
of it; then the float conversion and normalisation run on the small image. :class:`ResizedCache` keeps the resized
uint8 images in a memory-mapped file, so that later epochs skip decoding and resizing altogether.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.errors import DataError

CACHE_VERSION = 1  # part of every cache key: a change to how images are read makes new cache files
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """DataLoader workers for image files: one per CPU core this process may use, at most 8 (decoding scales with
    cores; more workers than cores only compete with training for them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


def open_image(path: str, channels: int, draft_size: Optional[int] = None) -> Any:
    """A PIL image in grey (1 channel) or RGB (3); an unreadable file is named. ``draft_size``: let a JPEG decode
    at a reduced scale (1/2, 1/4, 1/8) that still has at least this many pixels a side (PIL's ``draft``)."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            if draft_size is not None:
                image.draft(mode, (draft_size, draft_size))
            return image.convert(mode)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None


def _decode_jpeg(path: str) -> Optional[torch.Tensor]:
    """An RGB or grey JPEG as ``(3, H, W)`` uint8 by torchvision's decoder (1.6 ms where PIL takes 2.3, the same
    pixels: both are libjpeg-turbo); None for anything else (CMYK, a broken file), which PIL then reads."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    try:
        x = decode_jpeg(read_file(path), mode=ImageReadMode.UNCHANGED)
    except RuntimeError:
        return None
    if x.shape[0] == 1:  # grey: repeated to RGB, as PIL's convert("RGB") does
        return x.expand(3, -1, -1)
    return x if x.shape[0] == 3 else None


def read_resized(path: str, size: int, channels: int, draft: bool = False) -> torch.Tensor:
    """One image file as ``(channels, size, size)`` uint8: decoded, converted to grey or RGB, resized (bilinear,
    antialiased) to the square. ``draft``: JPEGs at least twice ``size`` a side decode at a reduced scale first
    (faster; the pixels differ slightly from a full decode)."""
    from torchvision.transforms.v2 import functional as F

    x = None
    if channels == 3 and not draft and path.lower().endswith((".jpg", ".jpeg")):
        x = _decode_jpeg(path)
    if x is None:
        image = open_image(path, channels, draft_size=size if draft else None)
        x = torch.from_numpy(np.array(image))  # (H, W) or (H, W, 3), a writable copy
        x = x.unsqueeze(0) if channels == 1 else x.permute(2, 0, 1)  # channels-last strides
    if x.shape[1:] != (size, size):
        x = F.resize(x, [size, size], antialias=True)
    return x.contiguous()


class Normalise:
    """uint8 ``(C, H, W)`` to float32 in [0, 1], then ``(x - mean) / std`` per channel: the arithmetic of
    torchvision's ``ToTensor`` and ``Normalize``, in place on the one new tensor."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255).sub_(self.mean).div_(self.std)


def _signature(path: str) -> tuple[int, int, int, int]:
    """What says a file is unchanged: modification time (ns), size, inode; the last 1 marks a filled cache row."""
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino, 1


class ResizedCache:
    """Resized uint8 images of a list of files, memory-mapped in ``folder``: ``<key>.pixels.npy`` of shape
    ``(N, channels, size, size)`` and ``<key>.index.npy`` with each row's file signature (modification time,
    size, inode). The key hashes the files' absolute paths, the image shape and how they were read, so another
    size, another set of files or another reader gets its own files; a file changed since its row was written
    (another signature) is read again and its row rewritten. DataLoader workers share the files (each opens
    them itself); each row is written by the one worker that reads that sample.

    The cache takes ``N * channels * size * size`` bytes of disk (750 MB for 5,000 RGB images at 224); old keys
    are not removed: delete the folder to reclaim them.
    """

    def __init__(self, folder: str, files: list[str], shape: tuple[int, int, int], reader: str) -> None:
        spec = [CACHE_VERSION, reader, list(shape), [os.path.abspath(f) for f in files]]
        key = hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:20]
        os.makedirs(folder, exist_ok=True)
        self.pixels_path = os.path.join(folder, f"{key}.pixels.npy")
        self.index_path = os.path.join(folder, f"{key}.index.npy")
        self.shape = (len(files), *shape)
        self._arrays: Optional[tuple[int, np.ndarray, np.ndarray]] = None  # (pid, pixels, index), opened per process
        if not (os.path.exists(self.pixels_path) and os.path.exists(self.index_path)):
            self._create()

    def _create(self) -> None:
        """Empty files under temporary names, renamed into place (a process that races us leaves a whole pair)."""
        from numpy.lib.format import open_memmap

        suffix = f".{os.getpid()}.tmp"
        pixels = open_memmap(self.pixels_path + suffix, mode="w+", dtype=np.uint8, shape=self.shape)
        index = open_memmap(self.index_path + suffix, mode="w+", dtype=np.int64, shape=(self.shape[0], 4))
        del pixels, index  # flushed and closed
        os.replace(self.pixels_path + suffix, self.pixels_path)
        os.replace(self.index_path + suffix, self.index_path)

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        pid = os.getpid()
        if self._arrays is None or self._arrays[0] != pid:
            pixels = np.load(self.pixels_path, mmap_mode="r+")
            index = np.load(self.index_path, mmap_mode="r+")
            if pixels.shape != self.shape or index.shape != (self.shape[0], 4):
                raise DataError(f"{self.pixels_path}: a cache file of another shape; delete it")
            self._arrays = (pid, pixels, index)
        return self._arrays[1], self._arrays[2]

    def get(self, i: int, path: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """Row ``i``, the resized image of ``path``: from the cache while the file is unchanged, else ``read``
        and stored."""
        pixels, index = self._open()
        signature = _signature(path)
        if tuple(index[i].tolist()) == signature:
            return torch.from_numpy(np.array(pixels[i]))
        x = read(path)
        pixels[i] = x.numpy()
        index[i] = signature  # after the pixels: a row is marked filled only once it is whole
        return x

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker opens the files itself
        return {**self.__dict__, "_arrays": None}


class ImageFiles(Dataset):
    """``(image, class index)`` pairs of image files: each file read at ``size`` (:func:`read_resized`), or from
    the :class:`ResizedCache` in ``cache_dir``, then through ``transform`` (uint8 ``(C, size, size)`` in).

    ``samples``, ``targets`` and ``classes`` as in torchvision's ImageFolder.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        classes: list[str],
        size: int,
        channels: int,
        transform: Callable[[torch.Tensor], torch.Tensor],
        draft: bool = False,
        cache_dir: Optional[str] = None,
    ) -> None:
        self.samples, self.classes = list(samples), list(classes)
        self.targets = [t for _, t in self.samples]
        self.size, self.channels, self.draft, self.transform = size, channels, draft, transform
        self.cache: Optional[ResizedCache] = None
        if cache_dir is not None:
            reader = f"read_resized(draft={draft})"
            files = [p for p, _ in self.samples]
            self.cache = ResizedCache(cache_dir, files, (channels, size, size), reader)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, path: str) -> torch.Tensor:
        return read_resized(path, self.size, self.channels, self.draft)

    def resized(self, i: int) -> torch.Tensor:
        """Sample ``i``'s image at the data's size, uint8, before the transform."""
        path = self.samples[i][0]
        return self._read(path) if self.cache is None else self.cache.get(i, path, self._read)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.resized(i)), self.samples[i][1]
