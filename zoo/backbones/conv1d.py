"""The fully convolutional (FCN) and residual (ResNet) time-series baselines of Wang et al. (2017).

"Time Series Classification from Scratch with Deep Neural Networks: A Strong Baseline", IJCNN 2017.
Both are stacks of ``Conv1d -> BatchNorm -> ReLU`` with "same" padding and no downsampling, ended by global
average pooling over time.

Padding: inputs arrive as ``(B, T, C)`` with padding at the end. Padded steps are set to zero at the input
and again before every convolution, and the global average pools only the real steps. "Same" padding pads
a lone sequence with zeros too, so every real step sees exactly what it would see without the batch's
padding: in eval mode a sample's features do not depend on the padding around it. In training mode batch
norm's statistics include the padded (zero) steps, the usual practice, so batches with much padding see
slightly different normalisation.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError
from zoo.layers import masked_mean, sequence_channels
from zoo.registry import register_backbone


class ConvBN1d(nn.Module):
    """``Conv1d`` (no bias) with "same" zero padding, then ``BatchNorm1d``: ``(B, C, T) -> (B, out, T)``.

    An even kernel pads ``(k - 1) // 2`` steps before and ``k // 2`` after, as Keras and PyTorch's
    ``padding="same"`` do; padding explicitly avoids the copy (and warning) ``"same"`` makes for even kernels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, bias=False)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.pad(x, self.pad)))


class ConvBlock1d(nn.Module):
    """``ConvBN1d -> ReLU``, padded steps zeroed again at the output (``keep``: ``(B, 1, T)``, 1 at real steps)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = ConvBN1d(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)) * keep


class ResidualBlock1d(nn.Module):
    """Wang et al.'s residual block: ``ConvBN1d`` per kernel (ReLU between), plus a shortcut, then ReLU.

    The shortcut is a 1x1 ``ConvBN1d`` when the channels change, else a ``BatchNorm1d`` alone (as in the
    authors' code). Padded steps are zeroed before every convolution and at the output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...]) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * len(kernel_sizes)
        self.convs = nn.ModuleList(ConvBN1d(a, b, k) for a, b, k in zip(widths, widths[1:], kernel_sizes))
        if in_channels != out_channels:
            self.shortcut: nn.Module = ConvBN1d(in_channels, out_channels, 1)
        else:
            self.shortcut = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = F.relu(h) * keep
        return F.relu(h + self.shortcut(x)) * keep


class _Conv1DBackbone(Backbone):
    """The shared frame: token embedding or channels in, blocks over ``(B, C, T)``, masked global average pool."""

    embed: Optional[nn.Embedding]
    blocks: nn.ModuleList

    def _init_input(self, name: str, input_shape: tuple[int, ...], vocab_size: Optional[int], embed_dim: int) -> int:
        channels = sequence_channels(name, input_shape, vocab_size)
        self.input_shape, self.vocab_size, self.embed_dim = tuple(input_shape), vocab_size, embed_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0) if vocab_size is not None else None
        return embed_dim if channels is None else channels  # None: token ids, embedded

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv1d):  # He init for the ReLUs that follow
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_features(x, mask)

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        mask = mask.bool()
        if self.embed is not None:
            x = self.embed(x)  # (B, T) ids -> (B, T, embed_dim)
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0).transpose(1, 2)  # (B, C, T), zeros at padding
        keep = mask.unsqueeze(1).to(x.dtype)  # (B, 1, T)
        for block in self.blocks:
            x = block(x, keep)
        return masked_mean(x.transpose(1, 2), mask)  # global average over the real steps: (B, num_features)

    def example_input(self, input_shape: tuple[int, ...], batch_size: int = 2) -> torch.Tensor:
        if self.vocab_size is not None:
            return torch.zeros(batch_size, *input_shape, dtype=torch.long)
        return super().example_input(input_shape, batch_size)

    def layer_groups(self) -> dict[str, nn.Module]:
        """``embed`` (token input only), then ``block0``, ``block1``, ... (the pooling has no parameters)."""
        groups: dict[str, nn.Module] = {"embed": self.embed} if self.embed is not None else {}
        groups.update({f"block{i}": block for i, block in enumerate(self.blocks)})
        return groups


@register_backbone("fcn1d", family="conv1d", input_kind="sequence")
class FCN1DBackbone(_Conv1DBackbone):
    """Wang et al.'s fully convolutional time-series baseline: 3 conv blocks, global average pooling.

    Args:
        input_shape: ``(T, C)`` for time series, or ``(T,)`` for token ids (with ``vocab_size``).
        vocab_size: number of token ids; when set, inputs are ids embedded by an ``nn.Embedding`` (row 0 is padding).
        embed_dim: width of the token embedding (token input only).
        filters: output channels of each ``Conv1d -> BN -> ReLU`` block; the last is ``num_features``.
        kernel_sizes: kernel size of each block.

    Raises:
        ConfigError: for an ``input_shape`` that does not fit ``vocab_size``, or mismatched filters / kernels.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (32, 3),
        vocab_size: Optional[int] = None,
        embed_dim: int = 64,
        filters: tuple[int, ...] = (128, 256, 128),
        kernel_sizes: tuple[int, ...] = (8, 5, 3),
    ) -> None:
        super().__init__()
        if not filters or len(filters) != len(kernel_sizes):
            raise ConfigError(
                f"fcn1d: filters={tuple(filters)} and kernel_sizes={tuple(kernel_sizes)} need one entry per block"
            )
        width = self._init_input("fcn1d", input_shape, vocab_size, embed_dim)
        self.filters, self.kernel_sizes = tuple(filters), tuple(kernel_sizes)
        blocks = []
        for out_ch, k in zip(filters, kernel_sizes):
            blocks.append(ConvBlock1d(width, out_ch, k))
            width = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.num_features = width
        self._init_weights()


@register_backbone("resnet1d", family="conv1d", input_kind="sequence")
class ResNet1DBackbone(_Conv1DBackbone):
    """Wang et al.'s residual time-series baseline: 3 residual blocks of 3 convs, global average pooling.

    Args:
        input_shape: ``(T, C)`` for time series, or ``(T,)`` for token ids (with ``vocab_size``).
        vocab_size: number of token ids; when set, inputs are ids embedded by an ``nn.Embedding`` (row 0 is padding).
        embed_dim: width of the token embedding (token input only).
        filters: output channels of each residual block; the last is ``num_features``.
        kernel_sizes: the kernel sizes of the convolutions inside every block (one convolution each).

    Raises:
        ConfigError: for an ``input_shape`` that does not fit ``vocab_size``, or empty filters / kernels.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (32, 3),
        vocab_size: Optional[int] = None,
        embed_dim: int = 64,
        filters: tuple[int, ...] = (64, 128, 128),
        kernel_sizes: tuple[int, ...] = (8, 5, 3),
    ) -> None:
        super().__init__()
        if not filters or not kernel_sizes:
            raise ConfigError(
                f"resnet1d needs filters and kernel_sizes; got {tuple(filters)} and {tuple(kernel_sizes)}"
            )
        width = self._init_input("resnet1d", input_shape, vocab_size, embed_dim)
        self.filters, self.kernel_sizes = tuple(filters), tuple(kernel_sizes)
        blocks = []
        for out_ch in filters:
            blocks.append(ResidualBlock1d(width, out_ch, self.kernel_sizes))
            width = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.num_features = width
        self._init_weights()
