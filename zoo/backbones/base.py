"""The interface every backbone answers, built-in or pretrained adapter.

The task and the fine-tuning callbacks speak only this interface, so they work the same for every family.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor: ``forward_features(x) -> (B, num_features)``.

    Subclasses set ``num_features`` and implement ``forward_features`` and ``layer_groups``.
    Images and vectors arrive as one tensor. Sequence backbones take ``forward_features(x, mask=None)``
    with ``x`` of shape ``(B, T, C)`` (or ``(B, T)`` token ids when built with ``vocab_size``) and
    ``mask`` ``(B, T)``, True at real (not padded) steps: the datamodule's batches are
    ``({"x": ..., "mask": ...}, target)`` and the task passes the dict as keyword arguments.
    """

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def example_input(self, input_shape: tuple[int, ...], batch_size: int = 2) -> Any:
        """A dummy batch for the model summary (two samples so that batch norm can run)."""
        return torch.zeros(batch_size, *input_shape)

    def layer_groups(self) -> dict[str, nn.Module]:
        """Named groups of layers from stem to top; every parameter belongs to exactly one group.

        Fine-tuning freezes, unfreezes and scales learning rates by these groups.
        """
        raise NotImplementedError
