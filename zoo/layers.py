"""Shared building blocks: activations and weight initialisation by name."""

from __future__ import annotations

from typing import Callable, Literal, overload

from torch import nn

from zoo.errors import ConfigError

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"]
Init = Literal[
    "default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "normal"
]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name."""
    if name not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def init_weights(
    module: nn.Module, scheme: str, activation: str = "relu", std: float = 0.02, bias: float = 0.0
) -> None:
    """Initialise the weight matrices of every Linear/Conv layer in ``module``; biases start at ``bias`` (0).

    Xavier suits tanh/sigmoid, He (kaiming) suits the ReLU family; ``normal`` draws from N(0, ``std``);
    ``default`` keeps PyTorch's init (biases included).
    """
    if scheme == "default":
        return
    # kaiming's gain formula knows relu and leaky_relu; the smooth ReLU-likes are close to relu.
    nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
    gain = nn.init.calculate_gain(activation if activation in ("tanh", "sigmoid", "relu") else "relu")
    schemes: dict[str, Callable[[nn.Parameter], object]] = {
        "xavier_uniform": lambda w: nn.init.xavier_uniform_(w, gain=gain),
        "xavier_normal": lambda w: nn.init.xavier_normal_(w, gain=gain),
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity),
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity=nonlinearity),
        "orthogonal": lambda w: nn.init.orthogonal_(w, gain=gain),
        "normal": lambda w: nn.init.normal_(w, std=std),
    }
    if scheme not in schemes:
        raise ConfigError(f"unknown init {scheme!r}; choose one of {['default', *schemes]}")
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            schemes[scheme](m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)


# --- patch embedding (vision transformers) -----------------------------------------------------------
import torch  # noqa: E402  (appended block; hoist into the header imports when convenient)


class PatchEmbed(nn.Module):
    """Cuts an image into non-overlapping square patches and projects each to ``embed_dim``.

    A convolution with ``kernel_size == stride == patch_size`` is exactly "flatten each patch, then
    one shared linear layer", done in one call.

    Args:
        input_shape: ``(channels, height, width)`` of one image; both sides must be multiples of ``patch_size``.
        patch_size: side of each square patch, in pixels.
        embed_dim: width of each patch token.

    Raises:
        ConfigError: if the image does not tile into whole patches.
    """

    def __init__(self, input_shape: tuple[int, int, int], patch_size: int, embed_dim: int) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"patch embedding expects images of shape (C, H, W), got input_shape={tuple(input_shape)}"
            )
        channels, height, width = input_shape
        if patch_size < 1 or height % patch_size or width % patch_size:
            fits = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
            raise ConfigError(
                f"a {height}x{width} image does not tile into {patch_size}x{patch_size} patches; set patch_size "
                f"to one that divides both {height} and {width} ({', '.join(map(str, fits))}), or resize "
                f"the images to multiples of {patch_size}"
            )
        self.input_shape = (channels, height, width)
        self.patch_size = patch_size
        self.grid_size = (height // patch_size, width // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"patch embedding was built for images of shape {self.input_shape}, got {tuple(x.shape[1:])}"
            )
        x = self.proj(x)  # (B, C, H, W) -> (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # -> (B, N, D), patches in row-major order


# --- convolution, batch norm, activation (ResNet and other CNNs) ----------------------------------------
class ConvBNAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> activation``, the unit CNNs are built from; the convolution has no bias.

    Padding is ``kernel_size // 2``, so an odd kernel keeps the spatial size at stride 1 and divides it
    (rounding up) by ``stride`` otherwise.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel side.
        stride: convolution stride.
        activation: non-linearity by name, or ``None`` for none (e.g. before a residual sum).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        activation: str | None = "relu",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        if activation is not None:
            self.act = make_activation(activation)


# --- sequences: input shapes, positional encodings, pooling over real (unpadded) steps -----------------
import math  # noqa: E402  (appended block; hoist into the header imports when convenient)


@overload
def sequence_channels(name: str, input_shape: tuple[int, ...], vocab_size: None) -> int: ...
@overload
def sequence_channels(name: str, input_shape: tuple[int, ...], vocab_size: int | None) -> int | None: ...
def sequence_channels(name: str, input_shape: tuple[int, ...], vocab_size: int | None) -> int | None:
    """Check a sequence backbone's ``input_shape``: the channels per step, or ``None`` for token ids.

    Time series are ``(T, C)`` floats; token ids are ``(T,)`` and need ``vocab_size``.

    Raises:
        ConfigError: if the shape does not match the kind of input ``vocab_size`` implies.
    """
    shape = tuple(input_shape)
    if vocab_size is None:
        if len(shape) != 2:
            raise ConfigError(
                f"{name} expects time series of shape (T, C), got input_shape={shape}; "
                "for token ids of shape (T,), set vocab_size"
            )
        return shape[1]
    if len(shape) != 1:
        raise ConfigError(
            f"{name} with vocab_size={vocab_size} expects token ids of shape (T,), got input_shape={shape}"
        )
    return None


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The fixed sine/cosine position table of Vaswani et al. (2017): ``(length, dim)``."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(D/2),)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]  # an odd dim has one cosine fewer
    return table


class SinusoidalPositionalEncoding(nn.Module):
    """Adds fixed sinusoidal positions to ``(B, T, D)`` inputs; any length works, ``max_len`` is only cached.

    The table is a non-persistent buffer: it is not in the state dict, so checkpoints do not depend on ``max_len``.
    """

    def __init__(self, dim: int, max_len: int = 512) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("table", sinusoidal_positions(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        table = self.table if length <= len(self.table) else sinusoidal_positions(length, self.dim).to(x.device)
        return x + table[:length].to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """Adds one learned vector per position to ``(B, T, D)`` inputs, for up to ``max_len`` positions.

    Raises:
        ConfigError: at run time, for a sequence longer than ``max_len``.
    """

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.max_len:
            raise ConfigError(
                f"a sequence of {length} positions is longer than the {self.max_len} learned positions; "
                "build the model for longer sequences or use sinusoidal positions"
            )
        return x + self.weight[:length]


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``(B, T, D)`` over the steps where ``mask`` ``(B, T)`` is True -> ``(B, D)``; ``None``: every step.

    Padded values never enter, even NaN or inf; a sequence without real steps gives zeros.
    """
    if mask is None:
        return x.mean(dim=1)
    total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)


def masked_max(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Maximum of ``(B, T, D)`` over the steps where ``mask`` is True -> ``(B, D)``; no real steps gives zeros."""
    if mask is None:
        return x.amax(dim=1)
    best = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    return torch.where(mask.any(dim=1, keepdim=True), best, torch.zeros_like(best))


class AttentionPool(nn.Module):
    """Weighted mean over real steps: a masked softmax of each step's score against one learned query.

    ``score_t = <x_t, query> / sqrt(D)``. The query starts at zero, so pooling starts as the masked mean.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = x @ self.query / math.sqrt(x.shape[-1])  # (B, T, D) -> (B, T)
        if mask is not None:
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=1).nan_to_num(0.0)  # a sequence without real steps: all weights 0
        return torch.einsum("bt,btd->bd", weights, x)  # -> (B, D)
