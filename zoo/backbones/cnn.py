"""The classic convolutional network: ``[Conv -> (BN) -> act -> Pool] x N -> Flatten -> Dense``."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError
from zoo.layers import Activation, Init, init_weights, make_activation
from zoo.registry import register_backbone

Pool = Literal["max", "avg", "none"]


@register_backbone("cnn", family="cnn", input_kind="image")
class CNNBackbone(Backbone):
    """Classic CNN: ``[Conv -> BN -> act] -> pool`` stages, then Flatten -> Dense.

    Args:
        input_shape: ``(channels, height, width)`` of one image.
        channels: output channels of each stage; each stage is ``convs_per_stage`` convolutions then a pool.
        kernel_size: convolution kernel size ("same" padding keeps the spatial size until the pool).
        convs_per_stage: convolutions before each pooling layer (VGG-style stages when > 1).
        pool: ``max`` or ``avg`` pooling of ``pool_size`` after each stage, or ``none``.
        pool_size: pooling window and stride.
        batch_norm: batch normalisation after each convolution.
        dense: widths of the dense layers after flattening; the last one is ``num_features``.
        dropout: dropout before each dense layer.
        activation: non-linearity after each convolution and dense layer.
        init: weight initialisation scheme.
        init_std: the standard deviation of the ``normal`` scheme's weights.
        bias_init: the value every bias starts at (any scheme but ``default``).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        channels: tuple[int, ...] = (32, 64),
        kernel_size: int = 3,
        convs_per_stage: int = 1,
        pool: Pool = "max",
        pool_size: int = 2,
        batch_norm: bool = True,
        dense: tuple[int, ...] = (128,),
        dropout: float = 0.0,
        activation: Activation = "relu",
        init: Init = "kaiming_normal",
        init_std: float = 0.02,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"cnn expects images of shape (C, H, W), got input_shape={tuple(input_shape)}")
        in_ch, height, width = input_shape
        stages = []
        for out_ch in channels:
            layers: list[nn.Module] = []
            for _ in range(convs_per_stage):
                layers.append(nn.Conv2d(in_ch, out_ch, kernel_size, padding="same", bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(make_activation(activation))
                in_ch = out_ch
            if pool != "none":
                if min(height, width) < pool_size:
                    raise ConfigError(
                        f"cnn: a {input_shape[1]}x{input_shape[2]} input is too small for {len(channels)} pooling "
                        f"stages of size {pool_size}; use fewer stages (backbone_kwargs.channels) or pool: none"
                    )
                layers.append((nn.MaxPool2d if pool == "max" else nn.AvgPool2d)(pool_size))
                height, width = height // pool_size, width // pool_size
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        flat = in_ch * height * width
        fcs = []
        for width_out in dense:
            fcs.append(nn.Sequential(nn.Dropout(dropout), nn.Linear(flat, width_out), make_activation(activation)))
            flat = width_out
        self.dense = nn.Sequential(*fcs)
        self.num_features = flat
        init_weights(self, init, activation, init_std, bias_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)  # (B, C, H, W) -> (B, channels[-1], H', W')
        return self.dense(x.flatten(1))  # -> (B, num_features)

    def layer_groups(self) -> dict[str, nn.Module]:
        groups: dict[str, nn.Module] = {f"stage{i}": s for i, s in enumerate(self.stages)}
        if len(self.dense):
            groups["dense"] = self.dense
        return groups
