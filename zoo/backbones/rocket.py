"""MiniRocket (Dempster, Schmidt and Webb, KDD 2021): a convolutional network whose kernels are fixed.

"MINIROCKET: A Very Fast (Almost) Deterministic Transform for Time Series Classification", arXiv:2012.08791.
84 kernels of length 9 (weights -1, and +2 at three of the nine positions) run at a set of dilations that
spans the series length; each (kernel, dilation) output becomes a few features, the proportion of steps above
a bias (PPV). The biases are quantiles of that output on random training series, so the backbone is fitted to
the data once before training (:meth:`MiniRocketBackbone.fit_to_data`) and then stays frozen: only the head
learns. On the small data of the UCR / UEA archives this holds up where networks trained from scratch need
hours: a linear head reaches the published MiniRocket accuracy in CPU seconds.

The layout follows the reference implementation (``angus924/minirocket``, also in aeon): the dilations, the
number of features per dilation, the golden-ratio quantiles, the random channel combinations of multivariate
series, and "same" padding on every other (kernel, dilation) pair with the others pooled over the steps
whose receptive field lies inside the series.
"""

from __future__ import annotations

import hashlib
from itertools import combinations
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError
from zoo.layers import sequence_channels
from zoo.registry import register_backbone

NUM_KERNELS, KERNEL_LENGTH = 84, 9
FIT_SAMPLES = 1024  # training series the biases and feature statistics are fitted on, at most
CACHE_BYTES = 512 << 20  # features kept per series seen, for the epochs after the first: at most this much


def _kernels() -> torch.Tensor:
    """The 84 kernels ``(84, 9)``: -1 everywhere, +2 at each choice of three positions."""
    weights = torch.full((NUM_KERNELS, KERNEL_LENGTH), -1.0)
    for k, positions in enumerate(combinations(range(KERNEL_LENGTH), 3)):
        weights[k, list(positions)] = 2.0
    return weights


def _dilations(length: int, num_features: int, max_dilations: int) -> tuple[list[int], list[int]]:
    """The dilations for series of ``length`` steps and how many features each gives per kernel."""
    per_kernel = num_features // NUM_KERNELS
    true_max = min(per_kernel, max_dilations)
    multiplier = per_kernel / true_max
    max_exponent = np.log2(max(length - 1, KERNEL_LENGTH - 1) / (KERNEL_LENGTH - 1))
    dilations, counts = np.unique(np.logspace(0, max_exponent, true_max, base=2).astype(np.int64), return_counts=True)
    counts = (counts * multiplier).astype(np.int64)
    for i in range(per_kernel - int(counts.sum())):  # the remainder, one each from the smallest dilation up
        counts[i % len(counts)] += 1
    return dilations.tolist(), counts.tolist()


def _quantiles(n: int) -> torch.Tensor:
    """Low-discrepancy quantiles in (0, 1): the fractional parts of multiples of the golden ratio."""
    return torch.tensor([(k * (5**0.5 + 1) / 2) % 1 for k in range(1, n + 1)], dtype=torch.float64).float()


@register_backbone("minirocket", family="rocket", input_kind="sequence")
class MiniRocketBackbone(Backbone):
    """MiniRocket's fixed convolutions and PPV pooling: ``(B, T, C)`` series -> ``(B, num_features)``.

    The features are standardised with their training mean and std (fitted with the biases), so a linear head
    trains well with any optimizer. Nothing here is trained: the backbone has no parameters, only buffers that
    :meth:`fit_to_data` sets and every checkpoint keeps.

    Args:
        input_shape: ``(T, C)``; ``T`` (the longest series) sets the dilations.
        num_features: about 10,000 in the paper; rounded down to a multiple of 84.
        max_dilations: the most dilations per kernel.
        seed: the random channel combinations and the training series the biases come from.

    Raises:
        ConfigError: for token input or fewer features than kernels.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (128, 1),
        num_features: int = 9_996,
        max_dilations: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        channels = sequence_channels("minirocket", input_shape, None)
        if num_features < NUM_KERNELS:
            raise ConfigError(f"minirocket: num_features={num_features} must be at least {NUM_KERNELS}")
        self.input_shape, self.seed = tuple(input_shape), seed
        length = max(int(input_shape[0]), KERNEL_LENGTH)
        self.dilations, self.per_dilation = _dilations(length, num_features, max_dilations)
        self.num_features = NUM_KERNELS * sum(self.per_dilation)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("kernels", _kernels())
        # Which channels each (dilation, kernel) pair sums: 1 to min(C, 9) of them, log-uniformly, as the paper.
        combos = torch.zeros(len(self.dilations), NUM_KERNELS, channels)
        most = min(channels, 9)
        counts = (2 ** (torch.rand(len(self.dilations), NUM_KERNELS, generator=generator) * np.log2(most + 1))).long()
        for j in range(len(self.dilations)):
            for k in range(NUM_KERNELS):
                chosen = torch.randperm(channels, generator=generator)[: int(counts[j, k].clamp(1, channels))]
                combos[j, k, chosen] = 1.0
        self.register_buffer("combinations", combos)
        self.register_buffer("biases", torch.zeros(self.num_features))
        self.standardize = Standardize(self.num_features)
        self.register_buffer("fitted", torch.tensor(False))
        # The transform is fixed once fitted, so a series' features are computed once: later epochs (and every
        # evaluation) read them back by the series' content. Emptied whenever the biases change.
        self._cache: dict[bytes, torch.Tensor] = {}
        self._cache_bytes = 0
        self.register_load_state_dict_post_hook(lambda module, _: module.clear_cache())

    # --- the transform ------------------------------------------------------------------------------
    def _convolve(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """``(B, C, T)`` -> ``(B, 84, T)``: every kernel at dilation ``j``, "same" padding, on its channel sum."""
        batch, channels, steps = x.shape
        dilation = self.dilations[j]
        weight = self.kernels.repeat(channels, 1).unsqueeze(1).to(x.dtype)  # (C * 84, 1, 9)
        out = F.conv1d(x, weight, padding=4 * dilation, dilation=dilation, groups=channels)
        return torch.einsum("kc,bckt->bkt", self.combinations[j].to(x.dtype), out.view(batch, channels, -1, steps))

    def _ppv(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unstandardised features ``(B, num_features)`` of ``x`` ``(B, C, T)`` with real steps ``mask``.

        Half the kernels pool over every real step ("same" padding), the other half over the steps whose
        receptive field lies inside the series (all real steps where a series is too short for that). The
        proportion above each bias is counted by sorting each output once and searching the biases in it,
        ``O(T log T)`` per output rather than ``O(T)`` per bias.
        """
        features, start = [], 0
        steps = torch.arange(mask.shape[1], device=x.device)
        lengths = mask.sum(dim=1, keepdim=True)
        for j, n in enumerate(self.per_dilation):
            pad = 4 * self.dilations[j]
            inner = mask & (steps >= pad) & (steps < lengths - pad)
            inner = torch.where(inner.any(dim=1, keepdim=True), inner, mask)
            padded = ((torch.arange(NUM_KERNELS, device=x.device) + j) % 2 == 0).view(1, -1, 1)
            pooled = torch.where(padded, mask.unsqueeze(1), inner.unsqueeze(1))  # (B, 84, T)
            out = self._convolve(x, j).masked_fill(~pooled, float("-inf")).sort(dim=-1).values
            biases = self.biases[start : start + NUM_KERNELS * n].view(1, NUM_KERNELS, n).to(out.dtype)
            start += NUM_KERNELS * n
            above = out.shape[-1] - torch.searchsorted(out, biases.expand(len(x), -1, -1).contiguous(), right=True)
            features.append((above / pooled.sum(-1, keepdim=True).clamp(min=1)).flatten(1).to(x.dtype))
        return torch.cat(features, dim=1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_features(x, mask)

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x, mask = self._inputs(x, mask)
        return self.standardize(self._cached_ppv(x, mask))

    def clear_cache(self) -> None:
        """Forget the features computed so far (the biases changed)."""
        self._cache.clear()
        self._cache_bytes = 0

    def _cached_ppv(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`_ppv`, computed only for the series not seen before (keyed by their real steps' bytes)."""
        if not bool(self.fitted):
            return self._ppv(x, mask)
        lengths = mask.sum(dim=1).tolist()
        keys = [
            hashlib.blake2b(x[i, :, : int(n)].detach().cpu().numpy().tobytes(), digest_size=16).digest()
            for i, n in enumerate(lengths)
        ]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            index = torch.tensor(missing, device=x.device)
            fresh = self._ppv(x[index], mask[index])
            for i, features in zip(missing, fresh):
                if self._cache_bytes + features.nbytes <= CACHE_BYTES:
                    self._cache[keys[i]] = features
                    self._cache_bytes += features.nbytes
            found = dict(zip(missing, fresh))
        else:
            found = {}
        return torch.stack([found[i] if i in found else self._cache[key] for i, key in enumerate(keys)])

    def _inputs(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, T)`` with zeros at padded steps, and the mask ``(B, T)``."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        mask = mask.bool()
        return x.masked_fill(~mask.unsqueeze(-1), 0.0).transpose(1, 2), mask

    # --- fitting to the data --------------------------------------------------------------------------
    @torch.no_grad()
    def fit_to_data(self, batches: Iterable[Any]) -> None:
        """Fit the biases and the features' mean and std to training series.

        ``batches`` yields the datamodule's inputs (``{"x": (B, T, C), "mask": (B, T)}`` dicts or tensors); at
        most :data:`FIT_SAMPLES` series are read. Each (dilation, kernel) pair takes its biases from one
        training series picked at random (seeded), as the reference does.
        """
        xs, masks, seen = [], [], 0
        for batch in batches:
            x, mask = (batch["x"], batch.get("mask")) if isinstance(batch, dict) else (batch, None)
            x, mask = self._inputs(x.to(self.kernels.device, self.kernels.dtype), mask)
            xs.append(x)
            masks.append(mask)
            seen += len(x)
            if seen >= FIT_SAMPLES:
                break
        if not xs:
            raise ConfigError("minirocket: no training series to fit its biases on")
        steps = max(x.shape[-1] for x in xs)
        x = torch.cat([F.pad(x, (0, steps - x.shape[-1])) for x in xs])[:FIT_SAMPLES]
        mask = torch.cat([F.pad(m, (0, steps - m.shape[-1])) for m in masks])[:FIT_SAMPLES]
        self.clear_cache()
        generator = torch.Generator().manual_seed(self.seed)
        quantiles = _quantiles(self.num_features).to(x.device)
        start = 0
        for j, n in enumerate(self.per_dilation):
            picks = torch.randint(len(x), (NUM_KERNELS,), generator=generator).to(x.device)
            out = self._convolve(x[picks], j)  # (84, 84, T): every kernel on each picked series
            for k in range(NUM_KERNELS):
                real = out[k, k][mask[picks[k]]]  # kernel k on its own series, real steps only
                self.biases[start : start + n] = torch.quantile(real.double(), quantiles[start : start + n].double())
                start += n
        features = torch.cat([self._ppv(x[i : i + 64], mask[i : i + 64]) for i in range(0, len(x), 64)])
        self.standardize.mean.copy_(features.mean(0))
        self.standardize.std.copy_(features.std(0).nan_to_num(0.0).clamp_min(1e-2))
        self.fitted.fill_(True)

    def layer_groups(self) -> dict[str, nn.Module]:
        """One group without parameters (the kernels are fixed, the biases and statistics fitted, never trained):
        the standardisation the features leave through."""
        return {"transform": self.standardize}


class Standardize(nn.Module):
    """``(features - mean) / std`` with statistics fitted to the training data and kept as buffers."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std
