"""Image folders at real sizes: ``ImageFolder`` at 224x224 against the best plain loaders written here.

A folder of generated JPEGs (varied sizes, 240-600 pixels a side, smooth colours with noise; 5,000 in the full
run, 500 in the short one) is written once under the system's temp folder and reused. Each loader is built
once (workers persist) and run one epoch per round, all loaders interleaved round by round; the first round is a
warm-up (it also fills the caches) and the best of the later rounds counts. Images per second, batch 64:

- zoo default: ``ImageFolder(image_size=224)`` as a user gets it (workers: one per core, persistent);
- zoo cache_dir, epoch 2+: the same with the resized images memory-mapped on disk (the warm-up fills it);
- zoo draft: the same with JPEG draft decoding (opt-in);
- plain loaders, each a hand-written Dataset with 2 persistent workers: PIL decode + PIL resize; PIL decode +
  torch's uint8 resize; PIL draft decode + torch resize; ``torchvision.io.decode_jpeg`` + torch resize; and the
  resized uint8 images held in memory (epoch 2+), normalised in workers or a whole batch at a time.

Target: the zoo's default >= 0.9x the best plain loader that decodes the files each epoch (the in-memory cache
is the point of comparison of ``cache_dir``, whose speed-up over the default is reported).
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import Figure, Stopwatch, ratio, set_threads

SIZE = 224
BATCH = 64
WORKERS = 2
THREADS = 2
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
FOLDER_VERSION = 1  # bump when the generated images change


def photo_folder(n: int, classes: int = 10) -> Path:
    """``n`` JPEGs in ``classes`` class folders under the temp folder, generated once (a marker file says the
    folder is complete) and reused by later runs."""
    from PIL import Image

    root = Path(tempfile.gettempdir()) / f"zoo-bench-photos-v{FOLDER_VERSION}" / str(n)
    if (root / "complete").exists():
        return root / "images"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(240, 601, size=2))
        small = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        noisy = np.asarray(small).astype(np.int16) + rng.integers(-12, 13, size=(h, w, 1), dtype=np.int16)
        path = root / "images" / f"class{i % classes}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    (root / "complete").touch()
    return root / "images"


# --- plain loaders --------------------------------------------------------------------------------------------
def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` to float, ImageNet-normalised."""
    return x.float().div_(255).sub_(MEAN).div_(STD)


def pil_decode(path: str, draft: bool = False) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        if draft:
            image.draft("RGB", (SIZE, SIZE))
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # channels-last strides


def torch_resize(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.resize(x, [SIZE, SIZE], antialias=True).contiguous()


def pil_pil(path: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        resized = image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return torch.from_numpy(np.array(resized)).permute(2, 0, 1).contiguous()


def pil_torch(path: str) -> torch.Tensor:
    return torch_resize(pil_decode(path))


def draft_torch(path: str) -> torch.Tensor:
    return torch_resize(pil_decode(path, draft=True))


def decode_jpeg_torch(path: str) -> torch.Tensor:
    from torchvision.io import decode_jpeg, read_file

    return torch_resize(decode_jpeg(read_file(path)))


class Files(Dataset):
    """Plain: each file through ``read`` (uint8 out), normalised (``as_uint8``: left uint8, to fill a cache)."""

    def __init__(self, samples: list[tuple[str, int]], read: Callable[[str], torch.Tensor], as_uint8: bool = False):
        self.samples, self.read, self.as_uint8 = samples, read, as_uint8

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        x = self.read(path)
        return (x if self.as_uint8 else normalise(x)), label


class InMemory(Dataset):
    """Plain: resized uint8 images held in one tensor (shared with forked workers), normalised on read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return normalise(self.images[i]), self.labels[i]


def batches_in_memory(images: torch.Tensor, labels: torch.Tensor) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Plain: shuffled batches cut from the in-memory images and normalised a whole batch at a time."""

    class Epochs:
        def __iter__(self) -> Any:
            order = torch.randperm(len(labels))
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                yield normalise(images[idx]), labels[idx]

    return Epochs()


def loader(dataset: Dataset, workers: int = WORKERS) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def resized_in_memory(samples: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image resized once (PIL decode + torch resize, with workers): the plain resized cache."""
    images = torch.cat([x for x, _ in DataLoader(Files(samples, pil_torch, as_uint8=True), 256, num_workers=WORKERS)])
    return images, torch.tensor([label for _, label in samples])


# --- the run --------------------------------------------------------------------------------------------------
def epoch_rate(batches: Iterable[Any]) -> float:
    n = 0
    with Stopwatch() as sw:
        for _, y in batches:
            n += len(y)
    return n / sw.seconds


def measure(n: int, rounds: int) -> list[Figure]:
    from datamodules import ImageFolder

    set_threads(THREADS)
    root = photo_folder(n)
    cache = tempfile.mkdtemp(prefix="zoo-bench-cache-")
    try:

        def zoo(**kwargs: Any) -> DataLoader:
            dm = ImageFolder(data_dir=str(root), image_size=SIZE, batch_size=BATCH, val_split=0, test_split=0, **kwargs)
            dm.setup("fit")
            return dm.train_dataloader()

        default = zoo()
        samples = list(default.dataset.dataset.samples)  # type: ignore[attr-defined]  # a Subset of ImageFiles
        decoding = {
            f"zoo default ({default.num_workers} workers)": default,
            "plain PIL decode + PIL resize": loader(Files(samples, pil_pil)),
            "plain PIL decode + torch resize": loader(Files(samples, pil_torch)),
            "plain PIL draft + torch resize": loader(Files(samples, draft_torch)),
            "plain decode_jpeg + torch resize": loader(Files(samples, decode_jpeg_torch)),
            "zoo draft": zoo(draft=True),
        }
        images, labels = resized_in_memory(samples)
        cached = {
            "zoo cache_dir, epoch 2+": zoo(cache_dir=cache),
            "plain in memory, 2 workers": loader(InMemory(images, labels)),
            "plain in memory, whole batches": batches_in_memory(images, labels),
        }
        everything: dict[str, Any] = {**decoding, **cached}
        rates: dict[str, list[float]] = {name: [] for name in everything}
        names = list(everything)
        for r in range(rounds + 1):  # round 0: warm-up, fills the zoo's cache (its epoch 1)
            for name in names[r % len(names) :] + names[: r % len(names)]:  # each round starts one further on
                gc.collect()
                rates[name].append(epoch_rate(everything[name]))
        first_epoch = rates["zoo cache_dir, epoch 2+"][0]
        best = {name: max(r[1:]) for name, r in rates.items()}
        del everything, decoding, cached, default
        gc.collect()  # stops the persistent workers
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return figures(n, best, first_epoch)


def figures(n: int, best: dict[str, float], cache_first_epoch: float) -> list[Figure]:
    default = next(iter(best))
    plain_decoding = {k: v for k, v in best.items() if k.startswith("plain") and "memory" not in k}
    best_plain = max(plain_decoding, key=plain_decoding.__getitem__)
    best_memory = max((k for k in best if "memory" in k), key=best.__getitem__)
    rounded = {k: round(v, 1) for k, v in best.items()}
    where = f"{n} JPEGs at {SIZE}x{SIZE}"
    return [
        ratio(
            f"image folder, {where}: zoo default / best plain loader decoding every epoch",
            best[default],
            best[best_plain],
            "images/s",
            at_least=0.9,
            sides=(default, best_plain),
            rates=rounded,
            batch_size=BATCH,
        ),
        ratio(
            f"image folder, {where}: zoo cache_dir epoch 2+ / zoo default",
            best["zoo cache_dir, epoch 2+"],
            best[default],
            "images/s",
            sides=("cache_dir, epoch 2+", "default"),
            cache_first_epoch=round(cache_first_epoch, 1),
        ),
        ratio(
            f"image folder, {where}: zoo cache_dir epoch 2+ / best plain in-memory cache",
            best["zoo cache_dir, epoch 2+"],
            best[best_memory],
            "images/s",
            sides=("cache_dir, epoch 2+", best_memory),
        ),
        ratio(
            f"image folder, {where}: zoo draft / zoo default (opt-in; pixels differ)",
            best["zoo draft"],
            best[default],
            "images/s",
            sides=("draft", "default"),
        ),
    ]


SIZES = {"full": (5000, 1), "short": (500, 1), "tiny": (64, 1)}  # images, measured rounds (after the warm-up)


def run(mode: str) -> list[Figure]:
    n, rounds = SIZES[mode]
    return measure(n, rounds)


if __name__ == "__main__":
    import sys

    for figure in run(sys.argv[1] if len(sys.argv) > 1 else "short"):
        print(figure.name, round(figure.measured, 3), figure.zoo, figure.plain, figure.details)
