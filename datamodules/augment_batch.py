"""Image augmentations of whole training batches, each sample with its own random parameters.

torchvision's v2 transforms draw one set of parameters per call: given a batch, they flip, rotate or crop
every image alike. The ops here are their batched twins, made from the very v2 transform a YAML name builds
(:func:`batch_twin`), so the arguments, their checks and the distributions of the parameters are
torchvision's: a flip is a per-sample coin, a rotation or crop a per-sample matrix, colour jitter per-sample
factors in a per-sample order, random erasing a per-sample box. :class:`BatchAugment` runs them in
:meth:`datamodules.base.ZooDataModule.on_after_batch_transfer`, on the device the batch is on, in training
only. Parameters come from torch's CPU generator, as torchvision's do (random erasing's noise from the
device's), so ``seed_everything`` makes them repeatable.

Where they differ from the per-sample path (the distributions of the parameters stay the same):

- Consecutive geometric ops (flips, rotation, random_resized_crop, random_crop) become one matrix per sample
  and one resampling, bilinear (torchvision resamples once per transform, a rotation by nearest neighbour;
  at a resized crop's edge it repeats the crop's border where bilinear here reads the pixels just past it).
  Flips and crops alone move whole pixels and copy them exactly.
- They see the sample as the model does, after any resize to ``image_size``: geometric parameters are drawn
  in pixels of the stored image and scaled; colour jitter works on float pixels in [0, 1] (not rounded to
  uint8 between its steps).

The geometric ops are in :mod:`datamodules.augment_warp`; colour jitter and random erasing are here.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from datamodules.augment_warp import (
    NORMALISED,
    PIXELS,
    Boxes,
    Crop,
    Flip,
    Geometric,
    ResizedCrop,
    Rotation,
    Warp,
    draw,
    draw_between,
    on_device,
)


# --- colour ------------------------------------------------------------------------------------------------
def _grey(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` luminance of RGB images, with torchvision's weights."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x).clamp(0.0, 1.0)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    grey = _grey(x) if x.shape[1] == 3 else x
    return _blend(x, grey.mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else _blend(x, _grey(x), factor)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue turned by ``shift`` (fractions of the colour circle): RGB -> HSV -> RGB, as torchvision does."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    value, low = x.amax(1), x.amin(1)
    spread = value - low
    grey = spread == 0
    saturation = spread / torch.where(grey, torch.ones_like(value), value)
    spread = torch.where(grey, torch.ones_like(spread), spread)
    hue = torch.where(value == g, 2.0 + (b - r) / spread, 4.0 + (r - g) / spread)
    hue = torch.where(value == r, (g - b) / spread, hue)  # in sixths of the circle, from red
    hue = torch.remainder(hue / 6.0 + shift.view(-1, 1, 1), 1.0)
    sector = torch.floor(hue * 6.0)
    f = hue * 6.0 - sector
    p = (value * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (value * (1.0 - saturation * f)).clamp(0.0, 1.0)
    t = (value * (1.0 - saturation * (1.0 - f))).clamp(0.0, 1.0)
    vpqt = torch.stack((value, p, q, t), 1)  # (B, 4, H, W)
    # which of v, p, q, t is r, g and b in each of the six sectors of the colour circle
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device)
    index = select[:, sector.long().remainder(6)].movedim(0, 1)  # (B, 3, H, W)
    return vpqt.gather(1, index)


class ColorJitter:
    """ColorJitter: brightness, contrast, saturation and hue factors per sample, applied in a per-sample random
    order, on pixels in [0, 1]."""

    space = PIXELS

    def __init__(self, brightness: Any, contrast: Any, saturation: Any, hue: Any) -> None:
        ops = ((_brightness, brightness), (_contrast, contrast), (_saturation, saturation), (_hue, hue))
        self.ops = [(fn, tuple(map(float, bounds))) for fn, bounds in ops if bounds is not None]

    def __call__(self, x: torch.Tensor, black: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, k = x.shape[0], len(self.ops)
        factors = np.stack([draw_between(n, low, high) for _, (low, high) in self.ops])
        factors = on_device(factors, x.device, x.dtype)  # (k, n)
        order = on_device(draw(n, k).argsort(1).T.copy(), x.device, torch.long)  # (k, n): op at each step, per sample
        for step in range(k):
            for op, (fn, _) in enumerate(self.ops):
                factor = factors[op] if fn is _hue else factors[op].view(n, 1, 1, 1)
                x = torch.where((order[step] == op).view(n, 1, 1, 1), fn(x, factor), x)
        return x


# --- erasing, on the normalised sample ------------------------------------------------------------------------
class Erasing:
    """RandomErasing: with probability ``p`` a box of ``scale`` of the area with aspect ``ratio`` (up to ten
    tries, else nothing) is set to ``value`` per channel, or to standard normal noise where ``value`` is None."""

    space = NORMALISED

    def __init__(self, p: float, scale: Sequence[float], ratio: Sequence[float], value: Optional[list[float]]) -> None:
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value
        self.boxes: dict[tuple[int, int], Boxes] = {}  # by the images' (H, W)

    def _boxes(self, height: int, width: int) -> Boxes:
        if (height, width) not in self.boxes:  # here the first side is the height
            self.boxes[height, width] = Boxes(
                height * width, self.scale, self.ratio, lambda h, w: (h < height) & (w < width)
            )
        return self.boxes[height, width]

    def __call__(self, x: torch.Tensor, black: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, c, H, W = x.shape
        if self.value is not None and len(self.value) not in (1, c):
            raise ValueError(f"random_erasing: value {self.value} needs one value or one per channel ({c})")
        h, w, u, v, found = self._boxes(H, W)(n)
        top, left = np.floor(u * (H - h + 1)), np.floor(v * (W - w + 1))
        erase = (draw(n) < self.p) & found
        # Each sample's box as [top, bottom) x [left, right), empty where it is not erased.
        box = on_device(np.stack([top, np.where(erase, top + h, top), left, left + w]).T.copy(), x.device)  # (n, 4)
        rows = torch.arange(H, device=x.device, dtype=torch.float32).view(1, H, 1)
        cols = torch.arange(W, device=x.device, dtype=torch.float32).view(1, 1, W)
        top_, bottom, left_, right = (b.view(n, 1, 1) for b in box.unbind(1))
        inside = (rows >= top_) & (rows < bottom) & (cols >= left_) & (cols < right)
        if self.value is None:
            fill = torch.randn_like(x)
        else:
            fill = torch.tensor(self.value, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return torch.where(inside[:, None], fill, x)


# --- from torchvision's transforms to these -------------------------------------------------------------------------
def batch_twin(transform: Any, size: tuple[int, int]) -> Optional[Any]:
    """The batched version of a v2 transform built for images of ``size`` (H, W) as stored, or None where there
    is none (RandAugment, TrivialAugmentWide, AutoAugment: their per-sample op choice stays per sample)."""
    from torchvision.transforms import v2

    if isinstance(transform, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)):
        return Flip(transform.p, axis=0 if isinstance(transform, v2.RandomHorizontalFlip) else 1)
    if isinstance(transform, v2.RandomRotation):
        return Rotation(transform.degrees)
    if isinstance(transform, v2.RandomResizedCrop):
        return ResizedCrop(transform.scale, transform.ratio, size)
    if isinstance(transform, v2.RandomCrop):
        return Crop(transform.padding, transform.padding_mode)
    if isinstance(transform, v2.ColorJitter):
        return ColorJitter(transform.brightness, transform.contrast, transform.saturation, transform.hue)
    if isinstance(transform, v2.RandomErasing):
        return Erasing(transform.p, transform.scale, transform.ratio, transform.value)
    return None


class BatchAugment:
    """Batched augmentations of normalised training batches ``(B, C, H, W)``, in order.

    ``mean`` and ``std`` are the normalisation the batch went through, from pixels in [0, 1]: colour ops get
    those pixels back, geometric ops fill with the normalised value of black (the per-sample path's fill),
    random erasing sees the normalised image as in torchvision's recipes.

    Args:
        ops: batched ops from :func:`batch_twin`, those on raw pixels first, then those on normalised images.
        size: ``(H, W)`` of the stored images, the unit of the geometric ops' parameters.
        mean: per-channel mean of the normalisation, in units of pixels in [0, 1].
        std: per-channel std, in the same units.
    """

    def __init__(self, ops: Sequence[Any], size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.steps: list[Any] = []
        for op in ops:  # consecutive geometric ops share one matrix; a crop with its own padding mode stands alone
            alone = isinstance(op, Crop) and op.mode != "constant"
            if (
                isinstance(op, Geometric)
                and not alone
                and self.steps
                and isinstance(self.steps[-1], Warp)
                and self.steps[-1].mode == "constant"
            ):
                self.steps[-1] = Warp([*self.steps[-1].ops, op], size)
            else:
                self.steps.append(Warp([op], size) if isinstance(op, Geometric) else op)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.black = {PIXELS: torch.zeros_like(self.mean), NORMALISED: -self.mean / self.std}  # fill of geometric ops

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device or self.mean.dtype != x.dtype:  # moved once, to the batches' device
            self.mean, self.std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
            self.black = {space: value.to(x.device, x.dtype) for space, value in self.black.items()}
        mean, std = self.mean, self.std
        space = NORMALISED
        for step in self.steps:
            if step.space == PIXELS and space == NORMALISED:
                x, space = x * std + mean, PIXELS
            elif step.space == NORMALISED and space == PIXELS:
                x, space = (x - mean) / std, NORMALISED
            x = step(x, self.black[space])
        return (x - mean) / std if space == PIXELS else x

    def __repr__(self) -> str:
        names = [
            type(s).__name__ + (f"({', '.join(type(o).__name__ for o in s.ops)})" if isinstance(s, Warp) else "")
            for s in self.steps
        ]
        return f"BatchAugment({', '.join(names)})"
