"""ResNet (He et al., 2015): residual stages of basic or bottleneck blocks, then global average pooling.

Two stems: ``imagenet`` (7x7 stride-2 convolution and a 3x3 max-pool, the paper's, for images of 64 pixels
and up) and ``small`` (one 3x3 stride-1 convolution, no pooling, for 8x8 digits, 28x28 MNIST, 32x32 CIFAR).
At the default widths the parameter counts match torchvision's resnet18 / 34 / 50 without their ``fc``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError
from zoo.layers import ConvBNAct
from zoo.registry import register_variant

BlockType = Literal["basic", "bottleneck"]
Stem = Literal["auto", "small", "imagenet"]
WIDTHS = (64, 128, 256, 512)
SMALL_STEM_BELOW = 64  # stem="auto" picks the small stem when min(H, W) is below this


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    The shortcut is a strided 1x1 convolution with batch norm when the shape changes, else the identity.
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvBNAct(in_channels, width, 3, stride)
        self.conv2 = ConvBNAct(width, out_channels, 3, activation=None)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch; zeroing its weight makes the block start as identity."""
        return self.conv2.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))  # (B, C, H, W) -> (B, width, H/s, W/s)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as in torchvision's "ResNet v1.5"), 1x1 expand to ``4 * width``, plus a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvBNAct(in_channels, width, 1)
        self.conv2 = ConvBNAct(width, width, 3, stride)
        self.conv3 = ConvBNAct(width, out_channels, 1, activation=None)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch; zeroing its weight makes the block start as identity."""
        return self.conv3.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return ConvBNAct(in_channels, out_channels, 1, stride, activation=None)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetBackbone(Backbone):
    """A residual network: a stem, stages of residual blocks (each after the first halves the resolution), then
    global average pooling to ``(B, num_features)``.

    Args:
        input_shape: ``(channels, height, width)`` of one image.
        block: ``basic`` (two 3x3 convolutions; ResNet-18/34) or ``bottleneck`` (1x1-3x3-1x1, 4x wider out;
            ResNet-50 and up).
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        widths: width of each stage (the bottleneck's inner width); the stem has ``widths[0]`` channels.
        stem: ``small`` keeps the resolution (3x3 stride-1 convolution, no pooling), ``imagenet`` divides it by 4
            (7x7 stride-2 convolution and a stride-2 max-pool); ``auto`` picks small below 64 pixels.
        zero_init_residual: start the last batch norm of every block at weight 0, so each block starts as the
            identity. Off by default: while the weight is 0, nothing inside the residual branch gets a gradient.
        drop_rate: dropout on the pooled features.

    Raises:
        ConfigError: for a non-image ``input_shape``, mismatched ``layers`` / ``widths``, or an image smaller than
            the total stride of the stem and stages (it would shrink below 1x1).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        block: BlockType = "basic",
        layers: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = WIDTHS,
        stem: Stem = "auto",
        zero_init_residual: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"resnet expects images of shape (C, H, W), got input_shape={tuple(input_shape)}")
        if block not in BLOCKS:
            raise ConfigError(f"resnet: unknown block {block!r}; choose one of {sorted(BLOCKS)}")
        if stem not in ("auto", "small", "imagenet"):
            raise ConfigError(f"resnet: unknown stem {stem!r}; choose auto, small or imagenet")
        if not layers or len(layers) != len(widths) or min(layers) < 1:
            raise ConfigError(
                f"resnet: layers={tuple(layers)} and widths={tuple(widths)} need one entry per stage, "
                "and every stage at least one block"
            )
        in_channels, height, width = input_shape
        if stem == "auto":
            stem = "small" if min(height, width) < SMALL_STEM_BELOW else "imagenet"
        _check_size(height, width, stem, len(layers))
        self.input_shape = tuple(input_shape)
        self.block, self.stem_kind = block, stem

        if stem == "small":  # (B, C, H, W) -> (B, widths[0], H, W)
            self.stem = nn.Sequential(ConvBNAct(in_channels, widths[0], 3, 1))
        else:  # (B, C, H, W) -> (B, widths[0], H/4, W/4)
            self.stem = nn.Sequential(ConvBNAct(in_channels, widths[0], 7, 2), nn.MaxPool2d(3, 2, padding=1))
        block_cls = BLOCKS[block]
        stages, channels = [], widths[0]
        for i, (depth, stage_width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(depth):  # the first block of every stage but the first halves H and W
                blocks.append(block_cls(channels, stage_width, stride=2 if i > 0 and j == 0 else 1))
                channels = stage_width * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.num_features = channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init for the ReLUs that follow
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, C, H, W) -> (B, num_features, H/stride, W/stride)
        return self.dropout(self.pool(x).flatten(1))  # -> (B, num_features)

    def layer_groups(self) -> dict[str, nn.Module]:
        return {"stem": self.stem, **{f"layer{i + 1}": stage for i, stage in enumerate(self.stages)}}


def _check_size(height: int, width: int, stem: str, num_stages: int) -> None:
    """Refuse an image smaller than the network's total stride: the last stage would see less than one pixel."""
    small_stride = 2 ** (num_stages - 1)  # every stage after the first halves H and W
    stride = small_stride if stem == "small" else 4 * small_stride  # the ImageNet stem divides by 4 more
    if min(height, width) >= stride:
        return
    fix = "a larger image size (e.g. data.image_size)"
    if stem == "imagenet" and min(height, width) >= small_stride:
        fix = f"backbone_kwargs.stem: small (it needs {small_stride}x{small_stride}) or {fix}"
    raise ConfigError(
        f"resnet: a {height}x{width} input is too small for the {stem} stem and {num_stages} stages: together they "
        f"downsample by {stride}, so images need at least {stride}x{stride}. Use {fix}"
    )


# --- registered variants: the block and the depth ---------------------------------------------------------
_IMAGE = {"family": "resnet", "input_kind": "image"}
register_variant(
    "resnet18",
    ResNetBackbone,
    **_IMAGE,
    fixed={"block": "basic", "layers": (2, 2, 2, 2)},
    description="ResNet-18 (basic blocks), small-input or ImageNet stem.",
)
register_variant(
    "resnet34",
    ResNetBackbone,
    **_IMAGE,
    fixed={"block": "basic", "layers": (3, 4, 6, 3)},
    description="ResNet-34 (basic blocks), small-input or ImageNet stem.",
)
register_variant(
    "resnet50",
    ResNetBackbone,
    **_IMAGE,
    fixed={"block": "bottleneck", "layers": (3, 4, 6, 3)},
    description="ResNet-50 (bottleneck blocks), small-input or ImageNet stem.",
)
