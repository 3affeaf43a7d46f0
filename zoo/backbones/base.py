"""The interface every backbone answers, built-in or pretrained adapter.

The task and the fine-tuning callbacks speak only this interface, so they work the same for every family.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor: ``forward_features(x) -> (B, num_features)``.

    Subclasses set ``num_features`` and implement ``forward_features`` and ``layer_groups``.
    """

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def layer_groups(self) -> dict[str, nn.Module]:
        """Named groups of layers from stem to top; every parameter belongs to exactly one group.

        Fine-tuning freezes, unfreezes and scales learning rates by these groups.
        """
        raise NotImplementedError
