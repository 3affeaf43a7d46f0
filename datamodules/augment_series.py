"""Time-series augmentations (Um et al. 2017, "Data augmentation of wearable sensor data"), by name in
:mod:`datamodules.augment`.

Each takes one series ``(T, C)`` as stored in the training split, before batches are padded: a series
is only ever changed within its own length, so padding and masks stay right. :class:`~datamodules.TimeSeries`
normalises when it reads the files, so the values here are in units of each channel's std (per-channel or
per-series normalisation), and ``sigma`` means the same on every dataset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check(**values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{key}={value} must be >= 0")


class Jitter(nn.Module):
    """Adds Gaussian noise to every value: ``x + N(0, sigma^2)``.

    Args:
        sigma: std of the noise, in units of the normalised data (0.03 in Um et al.).
    """

    def __init__(self, sigma: float = 0.03) -> None:
        super().__init__()
        _check(sigma=sigma)
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class Scaling(nn.Module):
    """Multiplies each channel of a series by its own factor ``~ N(1, sigma^2)`` (about the channel mean, which
    normalisation put at 0).

    Args:
        sigma: std of the factors (0.1 in Um et al.).
    """

    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        _check(sigma=sigma)
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 1.0 + self.sigma * torch.randn(x.shape[1:], dtype=x.dtype, device=x.device)  # (C,)
        return x * factor

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class Shift(nn.Module):
    """Shifts a series in time by a random whole number of steps, up to ``max_shift`` of its length either way.

    Args:
        max_shift: the largest shift, as a fraction of the series' own length.
        wrap: True rolls the steps that leave one end in at the other (tsai's ``TSRandomShift``); False
            repeats the edge value instead, for series whose ends do not meet.
    """

    def __init__(self, max_shift: float = 0.1, wrap: bool = True) -> None:
        super().__init__()
        _check(max_shift=max_shift)
        if max_shift > 1:
            raise ValueError(f"max_shift={max_shift} is a fraction of the series' length, at most 1")
        self.max_shift, self.wrap = max_shift, wrap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        most = int(self.max_shift * len(x))
        steps = int(torch.randint(-most, most + 1, ()))
        if self.wrap:
            return x.roll(steps, 0)
        return x[(torch.arange(len(x)) - steps).clamp(0, len(x) - 1)]

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, wrap={self.wrap}"


class TimeWarp(nn.Module):
    """Warps time smoothly: the series is replayed at a speed that varies along it, with its first and last
    steps kept (Um et al.'s time warping, with piecewise-linear rather than cubic speed curves).

    Speeds ``~ N(1, sigma^2)`` are drawn at ``knots + 2`` evenly spaced points and interpolated over the
    series; their running sum, rescaled to ``[0, T - 1]``, gives the (increasing) time each output step reads,
    by linear interpolation between neighbouring steps.

    Args:
        sigma: std of the speeds (0.2 in Um et al.).
        knots: number of inner points where the speed changes.
    """

    def __init__(self, sigma: float = 0.2, knots: int = 4) -> None:
        super().__init__()
        _check(sigma=sigma, knots=knots)
        self.sigma, self.knots = sigma, int(knots)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = len(x)
        if steps < 3:
            return x
        # Speeds kept positive so time only moves forward.
        speeds = (1.0 + self.sigma * torch.randn(self.knots + 2)).clamp_min(0.05)
        speed = F.interpolate(speeds.view(1, 1, -1), size=steps, mode="linear", align_corners=True).view(steps)
        t = speed.cumsum(0)
        t = (t - t[0]) / (t[-1] - t[0]) * (steps - 1)  # (T,), from 0 to T - 1
        low = t.floor().long().clamp(0, steps - 2)
        frac = (t - low).to(x.dtype).unsqueeze(1)  # (T, 1)
        return x[low] * (1.0 - frac) + x[low + 1] * frac

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, knots={self.knots}"
