"""Multi-layer perceptron: the baseline for vectors, and for small images once flattened."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError
from zoo.layers import Activation, Init, init_weights, make_activation
from zoo.registry import register_backbone

Norm = Literal["none", "batch", "layer"]


@register_backbone("mlp", family="mlp", input_kind="vector")
class MLPBackbone(Backbone):
    """Multi-layer perceptron over flattened inputs: ``Linear -> norm -> activation -> dropout`` per layer.

    Args:
        input_shape: shape of one sample without the batch dimension; it is flattened.
        hidden_sizes: width of each hidden layer; the last one is ``num_features``.
        activation: non-linearity between layers.
        dropout: dropout probability after each hidden layer.
        norm: normalisation after each linear layer (``batch`` or ``layer``), or ``none``.
        init: weight initialisation scheme (He for ReLU-like activations, Xavier for tanh / sigmoid).
        init_std: the standard deviation of the ``normal`` scheme's weights.
        bias_init: the value every bias starts at (any scheme but ``default``).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (64,),
        hidden_sizes: tuple[int, ...] = (256, 128),
        activation: Activation = "relu",
        dropout: float = 0.0,
        norm: Norm = "none",
        init: Init = "kaiming_normal",
        init_std: float = 0.02,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ConfigError("mlp needs at least one hidden size; set hidden_sizes, e.g. [128]")
        in_features = math.prod(input_shape)
        blocks = []
        for width in hidden_sizes:
            layers: list[nn.Module] = [nn.Linear(in_features, width)]
            if norm == "batch":
                layers.append(nn.BatchNorm1d(width))
            elif norm == "layer":
                layers.append(nn.LayerNorm(width))
            layers += [make_activation(activation), nn.Dropout(dropout)]
            blocks.append(nn.Sequential(*layers))
            in_features = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = hidden_sizes[-1]
        init_weights(self, init, activation, init_std, bias_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.flatten(1))  # (B, *input_shape) -> (B, num_features)

    def layer_groups(self) -> dict[str, nn.Module]:
        return {f"block{i}": block for i, block in enumerate(self.blocks)}
