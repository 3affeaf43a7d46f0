"""Geometric augmentations of whole batches: flips, rotations and crops as one matrix per sample.

Each op draws its parameters per sample from torchvision's distributions (:mod:`datamodules.augment_batch`
makes them from torchvision's transforms) and answers with a ``(n, 3, 3)`` matrix; :class:`Warp` composes the
matrices of consecutive ops and resamples each image once: bilinear through ``grid_sample``, or, where every op
moves whole pixels (flips, crops), by copying rows and columns exactly.

Parameters are a few numbers per sample: they are worked out on the CPU in float64 numpy from torch's CPU
generator (seeded by ``torch.manual_seed`` and ``seed_everything``), as torchvision works them out in Python
floats, and reach the batch's device as one small tensor. A device kernel per tiny step would cost more than
the step; on a CPU, torch's sqrt or exp of a few hundred numbers wakes its threads.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

PIXELS, NORMALISED, ANY = "pixels", "normalised", "any"  # the values an op works on (ANY: geometric ops)


def draw(*shape: int) -> np.ndarray:
    """Uniforms in [0, 1) from torch's CPU generator, as float64 numpy."""
    return torch.rand(*shape).numpy().astype(np.float64)  # float32 draws, as torchvision's


def draw_between(n: int, low: float, high: float) -> np.ndarray:
    return low + draw(n) * (high - low)


def _eye(n: int) -> np.ndarray:
    return _eyes(n).copy()


@functools.lru_cache(maxsize=4)
def _eyes(n: int) -> np.ndarray:
    return np.tile(np.eye(3), (n, 1, 1))


def on_device(array: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(array).to(device=device, dtype=dtype)


# --- geometric ops: per-sample matrices, output -> input, in centred pixels of the stored image -------------------
# A pixel (row, col) of an H x W image is at (col - (W - 1) / 2, row - (H - 1) / 2): the image's centre is 0.
class Geometric:
    space = ANY
    exact = False  # moves whole pixels only (flips, crops): resampled by copying pixels

    def matrix(self, n: int) -> np.ndarray:
        """``(n, 3, 3)``: where each output pixel reads the input, one random draw per sample."""
        raise NotImplementedError


class Flip(Geometric):
    """RandomHorizontalFlip (``axis=0``, the x axis) or RandomVerticalFlip (``axis=1``) with probability ``p``."""

    exact = True

    def __init__(self, p: float, axis: int) -> None:
        self.p, self.axis = p, axis

    def matrix(self, n: int) -> np.ndarray:
        m = _eye(n)
        m[:, self.axis, self.axis] = np.where(draw(n) < self.p, -1.0, 1.0)
        return m


class Rotation(Geometric):
    """RandomRotation: an angle uniform in ``degrees`` (low, high), anticlockwise, about the image's centre."""

    def __init__(self, degrees: Sequence[float]) -> None:
        self.low, self.high = float(degrees[0]), float(degrees[1])

    def matrix(self, n: int) -> np.ndarray:
        angle = np.radians(draw_between(n, self.low, self.high))
        cos, sin = np.cos(angle), np.sin(angle)
        m = _eye(n)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos  # y points down: anticlockwise on screen
        return m


class Boxes:
    """torchvision's boxes of ``scale`` of the area with aspect ``exp(log_ratio)``: up to ten tries per sample, of
    whole-pixel sides ``(a, b) = (sqrt(area * r), sqrt(area / r))`` rounded, the first that ``fits(a, b)`` taken
    (a condition on upper and lower bounds of each side)."""

    def __init__(
        self,
        area: float,
        scale: Sequence[float],
        ratio: Sequence[float],
        fits: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> None:
        self.area, self.scale, self.log_ratio, self.fits = area, tuple(scale), np.log(ratio), fits
        a, b = self.sides(np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))  # at the draws' extremes
        self.always = bool(fits(a.max(), b.max()) and fits(a.min(), b.min()))  # the first try is every box

    def sides(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sides ``(a, b)`` of the boxes two uniforms per box pick: scale, then log aspect."""
        target = self.area * (self.scale[0] + draws[:, 0] * (self.scale[1] - self.scale[0]))
        aspect = np.exp(self.log_ratio[0] + draws[:, 1] * (self.log_ratio[1] - self.log_ratio[0]))
        return np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))  # half to even, as round()

    def __call__(self, n: int) -> tuple[np.ndarray, ...]:
        """``a, b`` and two uniforms ``u, v`` for the box's position, ``(n,)`` each, and ``found`` (n,): False
        where no try fitted (the values are then meaningless)."""
        if self.always:
            draws = draw(n, 4)
            return (*self.sides(draws), draws[:, 2], draws[:, 3], np.ones(n, dtype=bool))
        a, b, u, v = np.zeros((4, n))
        found = np.zeros(n, dtype=bool)
        trying = np.arange(n)
        for _ in range(10):
            draws = draw(len(trying), 4)
            tries = self.sides(draws)
            ok = self.fits(*tries)
            done = trying[ok]
            a[done], b[done], u[done], v[done] = tries[0][ok], tries[1][ok], draws[ok, 2], draws[ok, 3]
            found[done] = True
            trying = trying[~ok]
            if not len(trying):
                break
        return a, b, u, v, found


class ResizedCrop(Geometric):
    """RandomResizedCrop: a box of ``scale`` of the area with aspect ``ratio`` (whole pixels, up to ten tries,
    else the central crop), resized to the whole image."""

    def __init__(self, scale: Sequence[float], ratio: Sequence[float], size: tuple[int, int]) -> None:
        self.height, self.width = H, W = size
        self.boxes = Boxes(H * W, scale, ratio, lambda w, h: (w <= W) & (h <= H) & (w * h > 0))
        in_ratio = self.width / self.height
        if in_ratio < min(ratio):  # the fallback after ten misses: torchvision's central crop
            w, h = self.width, round(self.width / min(ratio))
        elif in_ratio > max(ratio):
            w, h = round(self.height * max(ratio)), self.height
        else:
            w, h = self.width, self.height
        self.fallback = (w, h, (self.height - h) // 2, (self.width - w) // 2)

    def matrix(self, n: int) -> np.ndarray:
        H, W = self.height, self.width
        w, h, u, v, found = self.boxes(n)
        box: tuple[np.ndarray, ...] = w, h, np.floor(u * (H - h + 1)), np.floor(v * (W - w + 1))
        if not found.all():
            box = tuple(np.where(found, value, fallback) for value, fallback in zip(box, self.fallback))
        w, h, top, left = box
        m = _eye(n)
        m[:, 0, 0], m[:, 1, 1] = w / W, h / H
        m[:, 0, 2], m[:, 1, 2] = left + w / 2 - W / 2, top + h / 2 - H / 2
        return m


class Crop(Geometric):
    """RandomCrop of the image's own size from the image padded by ``padding`` (left, right, top, bottom)."""

    exact = True

    def __init__(self, padding: Optional[Sequence[int]], mode: str) -> None:
        self.left, self.right, self.top, self.bottom = padding or (0, 0, 0, 0)
        self.mode = mode

    def matrix(self, n: int) -> np.ndarray:
        m = _eye(n)
        m[:, 0, 2] = np.floor(draw(n) * (self.left + self.right + 1)) - self.left
        m[:, 1, 2] = np.floor(draw(n) * (self.top + self.bottom + 1)) - self.top
        return m


def _source(index: np.ndarray, n: int, mode: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Indices ``index`` (any integers) of a side of ``n`` pixels read in the padded image, as indices into the
    image, and where they fall inside it (constant padding only; None: every index reads the image)."""
    if mode == "constant":
        return index.clip(0, n - 1), (index >= 0) & (index < n)
    if mode == "reflect":
        index = np.where(index < 0, -index, np.where(index >= n, 2 * (n - 1) - index, index))
    elif mode == "symmetric":
        index = np.where(index < 0, -index - 1, np.where(index >= n, 2 * n - 1 - index, index))
    return index.clip(0, n - 1), None  # edge: the nearest pixel of the border


@functools.lru_cache(maxsize=8)
def unit_grid(height: int, width: int) -> np.ndarray:
    """``(H * W, 3)``: each pixel's centre as ``(x, y, 1)`` in grid_sample's coordinates (affine_grid's base grid)."""
    xs, ys = (np.arange(width) * 2 + 1) / width - 1, (np.arange(height) * 2 + 1) / height - 1
    grid = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], 1.0), -1).reshape(height * width, 3)
    return grid.astype(np.float32)


class Warp:
    """Consecutive geometric ops as one matrix per sample, resampled once. Where every op moves whole pixels
    (flips, crops) the pixels are copied, with the crop's padding mode; else bilinear, black outside."""

    space = ANY

    def __init__(self, ops: Sequence[Geometric], size: tuple[int, int]) -> None:
        self.ops, self.size = list(ops), size
        self.exact = all(op.exact for op in self.ops)
        self.mode = next((op.mode for op in self.ops if isinstance(op, Crop)), "constant")

    def __call__(self, x: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        m = self.ops[0].matrix(n)
        for op in self.ops[1:]:  # the first op reads the input: input <- m1 <- m2 <- ... <- output
            m = m @ op.matrix(n)
        if (height, width) != self.size:  # from the stored image's pixels to the sample's (resized) ones
            scale = np.array([width / self.size[1], height / self.size[0], 1.0])
            m = scale[:, None] * m / scale
        if self.exact:
            return self._copy(x, m, black)
        to_unit = np.array([2.0 / width, 2.0 / height, 1.0])  # grid_sample's coordinates, from -1 to 1
        theta = (to_unit[:, None] * m / to_unit)[:, :2].astype(np.float32)  # (n, 2, 3)
        if x.device.type == "cpu":  # torch's bmm of inner size 3 (affine_grid's) is slow on a CPU; numpy's is not
            grid = (unit_grid(height, width) @ theta.transpose(0, 2, 1)).reshape(n, height, width, 2)
            grid = on_device(grid, x.device, x.dtype)
        else:
            grid = F.affine_grid(on_device(theta, x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x - black, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + black

    def _copy(self, x: torch.Tensor, m: np.ndarray, black: torch.Tensor) -> torch.Tensor:
        """Flips and whole-pixel shifts: each output row and column reads one input row and column."""
        n, c, height, width = x.shape
        maps = []
        for axis, side in ((1, height), (0, width)):
            centre = (side - 1) / 2
            read = m[:, axis, axis, None] * (np.arange(side) - centre) + m[:, axis, 2, None] + centre  # (n, side)
            maps.append(_source(np.rint(read).astype(np.int64), side, self.mode))
        (rows, rows_in), (cols, cols_in) = maps
        out = x.gather(2, on_device(rows, x.device, torch.long)[:, None, :, None].expand(n, c, height, width))
        out = out.gather(3, on_device(cols, x.device, torch.long)[:, None, None, :].expand(n, c, height, width))
        if rows_in is None or cols_in is None:
            return out
        rows_in, cols_in = on_device(rows_in, x.device, torch.bool), on_device(cols_in, x.device, torch.bool)
        return torch.where(rows_in[:, None, :, None] & cols_in[:, None, None, :], out, black)
