"""Datasets held in memory as tensors, read a whole batch at a time.

PyTorch's DataLoader asks a map-style dataset for a batch of indices at once when the dataset has a
``__getitems__`` (``torch.utils.data._utils.fetch._MapDatasetFetcher``), through a ``Subset`` too, whatever the
sampler (shuffled, sequential, DDP's ``DistributedSampler``) and in worker processes alike. The datasets here
answer with a :class:`StackedBatch`: one indexing operation per tensor instead of ``batch_size`` calls of
``__getitem__`` and a collate that stacks their results again. :func:`collate` (what
:meth:`datamodules.base.ZooDataModule.collate_fn` gives every loader) passes it through, so a batch is
exactly what reading sample by sample and stacking would give: same samples, order, dtypes and container.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset, default_collate

from datamodules.augment import ImageAugment


class StackedBatch(Sequence):
    """A batch read at once: ``fields[k]`` is the k-th field of every sample, stacked along the first dimension.

    It is also the sequence of its samples (``batch[i]`` is sample ``i``'s tuple of fields), so a collate that
    does not know it still gets what it expects, a list of samples, and stacks them again.
    """

    def __init__(self, *fields: torch.Tensor) -> None:
        self.fields = fields

    def __len__(self) -> int:
        return len(self.fields[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:  # type: ignore[override]  # ints only, no slices
        return tuple(field[i] for field in self.fields)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return zip(*self.fields)


def collate(batch: Any) -> Any:
    """PyTorch's default collate, which a :class:`StackedBatch` passes through as the list ``[x, y, ...]`` the
    default collate would have stacked from its samples."""
    if isinstance(batch, StackedBatch):
        return list(batch.fields)
    return default_collate(batch)


def _index(indices: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(indices, dtype=torch.long)


class BatchedTensorDataset(TensorDataset):
    """A ``TensorDataset`` that reads a batch with one indexing operation per tensor."""

    def __getitems__(self, indices: Sequence[int]) -> StackedBatch:
        index = _index(indices)
        return StackedBatch(*(tensor[index] for tensor in self.tensors))


class UInt8Images(Dataset):
    """Images kept in memory as uint8, converted, resized and normalised per channel only when they are read.

    Args:
        images: ``(N, C, H, W)`` uint8 pixels.
        labels: ``(N,)`` class indices.
        mean: per-channel mean, in units of pixel / 255.
        std: per-channel std, in the same units.
        channels: channels of the samples: grey images are repeated to 3 channels, colour ones averaged to 1.
        size: ``(H, W)`` of the samples (bilinear, antialiased), or None to keep the stored size.
        augment: per-sample training augmentations: on the stored uint8 pixels first (the range torchvision's
            colour operations expect, and cheaper than at a larger resized size), then on the normalised sample.
            Those with a batched version run on whole batches instead (:mod:`datamodules.augment_batch`).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        channels: Optional[int] = None,
        size: Optional[tuple[int, int]] = None,
        augment: Optional[ImageAugment] = None,
    ) -> None:
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.channels = channels or images.shape[1]
        self.size = size if size is not None and tuple(size) != tuple(images.shape[2:]) else None
        self.before = augment.before_normalise if augment is not None else None
        self.after = augment.after_normalise if augment is not None else None

    def __len__(self) -> int:
        return len(self.labels)

    def _prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` uint8 pixels as the model's normalised float samples (the same values for a sample
        whether it is read alone or in a batch)."""
        x = pixels.float().div_(255.0)  # in [0, 1]
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True)
        return (x - self.mean).div_(self.std)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.images[i]  # (C, H, W) uint8
        if self.before is not None:
            pixels = self.before(pixels)
        x = self._prepare(pixels[None])[0]
        if self.after is not None:
            x = self.after(x)
        return x, self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        if self.after is not None:  # random draws in the per-sample order: a sample's both steps, then the next
            return [self[i] for i in indices]
        index = _index(indices)
        pixels = self.images[index]
        if self.before is not None:
            pixels = torch.stack([self.before(p) for p in pixels])
        return StackedBatch(self._prepare(pixels), self.labels[index])
