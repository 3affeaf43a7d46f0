"""Batched in-memory loading: the candidate the data-loading benchmark sets against the datamodules' per-sample
loaders. A whole batch is read from the in-memory tensors with one indexing operation and augmented with
vectorised operations (one random draw per sample, as the per-sample transforms do), instead of
``batch_size`` calls of ``__getitem__`` and a collate.

The augmentations here follow the distributions of torchvision's ``RandomRotation`` + ``RandomResizedCrop``
(the digits recipe's) and ``RandomCrop(padding=4)`` + ``RandomHorizontalFlip`` (CIFAR's); they are for
measuring, not bit-for-bit copies.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

Batch = tuple[torch.Tensor, torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]


class BatchedView(Dataset):
    """Indexed by a list of indices (what a ``BatchSampler`` yields): returns the whole batch at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Optional[Transform]) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices)
        x = self.x[index]
        return (self.transform(x) if self.transform is not None else x), self.y[index]


def batched_loader(view: BatchedView, batch_size: int, seed: int = 0) -> DataLoader:
    """Shuffled batches of ``view``, read one batch per ``__getitem__`` (no collate)."""
    sampler = BatchSampler(RandomSampler(view, generator=torch.Generator().manual_seed(seed)), batch_size, False)
    return DataLoader(view, sampler=sampler, batch_size=None)


def normalise(mean: Sequence[float], std: Sequence[float], scale: float) -> Transform:
    """``(x / scale - mean) / std`` per channel, on a ``(B, C, H, W)`` batch."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return lambda x: (x.float() / scale - m) / s


def rotate_resized_crop(degrees: float, scale: Sequence[float], ratio: Sequence[float]) -> Transform:
    """Per-sample rotation in ``[-degrees, degrees]`` and a crop of ``scale`` of the area with aspect ``ratio``,
    resized back to the image's size: one affine grid for the batch, bilinear sampling, black outside."""

    def transform(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        angle = (torch.rand(b) * 2 - 1) * math.radians(degrees)
        area = scale[0] + torch.rand(b) * (scale[1] - scale[0])
        log_r = math.log(ratio[0]) + torch.rand(b) * (math.log(ratio[1]) - math.log(ratio[0]))
        aspect = torch.exp(log_r)
        w, h = torch.sqrt(area * aspect).clamp(max=1.0), torch.sqrt(area / aspect).clamp(max=1.0)
        cx, cy = (torch.rand(b) * 2 - 1) * (1 - w), (torch.rand(b) * 2 - 1) * (1 - h)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([w * cos, -h * sin, cx], 1), torch.stack([w * sin, h * cos, cy], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return transform


def crop_flip(padding: int) -> Transform:
    """Per-sample random crop of the image padded by ``padding`` zeros, and a horizontal flip with p = 0.5."""

    def transform(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        padded = F.pad(x, (padding,) * 4)
        dy, dx = torch.randint(0, 2 * padding + 1, (b,)), torch.randint(0, 2 * padding + 1, (b,))
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
        flip = torch.rand(b) < 0.5
        cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
        batch = torch.arange(b)[:, None, None, None]
        channel = torch.arange(x.shape[1])[None, :, None, None]
        return padded[batch, channel, rows, cols]

    return transform


def compose(*steps: Transform) -> Transform:
    def transform(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return transform


__all__ = ["BatchedView", "batched_loader", "compose", "crop_flip", "normalise", "rotate_resized_crop"]
