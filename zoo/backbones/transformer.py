"""A pre-norm transformer encoder over variable-length, end-padded sequences.

``(B, T, C) floats -> Linear`` (or ``(B, T) ids -> Embedding``) ``-> [CLS] + steps + positions -> dropout
-> [x + MHSA(LN(x)), x + FFN(LN(x))] x num_layers -> LN -> pool``. Attention never looks at padded steps
(``src_key_padding_mask``) and pooling ignores them, so a sample's features are the same alone or in a padded
batch (up to float rounding, in eval mode).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError
from zoo.layers import LearnedPositionalEncoding, SinusoidalPositionalEncoding, masked_mean, sequence_channels
from zoo.registry import register_backbone

Positional = Literal["sinusoidal", "learned"]
Pool = Literal["cls", "mean"]


class SequenceEmbedding(nn.Module):
    """The stem: each step to ``d_model``, a learned CLS token in front (``cls`` pooling), positions added.

    ``(B, T, C)`` or ``(B, T)`` ids, mask ``(B, T)`` -> tokens ``(B, T', d_model)``, mask ``(B, T')``, with
    ``T' = T + 1`` when a CLS token is prepended (it is always real).
    """

    def __init__(
        self,
        in_channels: Optional[int],
        vocab_size: Optional[int],
        d_model: int,
        max_steps: int,
        positional: Positional,
        cls_token: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        if vocab_size is not None:
            self.proj: nn.Module = nn.Embedding(vocab_size, d_model, padding_idx=0)
        else:
            self.proj = nn.Linear(in_channels, d_model)
        self.max_steps = max_steps
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model)) if cls_token else None
        max_len = max_steps + int(cls_token)
        if positional == "learned":
            self.pos: nn.Module = LearnedPositionalEncoding(max_len, d_model)
        else:
            self.pos = SinusoidalPositionalEncoding(d_model, max_len)
        self.learned = positional == "learned"
        self.drop = nn.Dropout(dropout)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.learned and x.shape[1] > self.max_steps:
            raise ConfigError(
                f"transformer: a sequence of {x.shape[1]} steps is longer than the {self.max_steps} steps its learned "
                f"positions were built for (input_shape[0]={self.max_steps}); build it for longer sequences "
                "(the datamodule's max length) or use positional: sinusoidal"
            )
        if x.is_floating_point():
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # garbage (even NaN) at padding stays out of attention
        x = self.proj(x)  # (B, T, d_model)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + T, d_model)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return self.drop(self.pos(x)), mask


@register_backbone("transformer", family="transformer", input_kind="sequence")
class TransformerBackbone(Backbone):
    """A pre-norm transformer encoder; features are the final CLS token or the mean of the real steps.

    Args:
        input_shape: ``(T, C)`` for time series, or ``(T,)`` for token ids (with ``vocab_size``); ``T`` is the
            longest sequence, which learned positions are built for.
        vocab_size: number of token ids; when set, inputs are ids embedded by an ``nn.Embedding`` whose
            row 0 is padding (kept at zero).
        d_model: width of every token, and ``num_features``.
        num_heads: attention heads; must divide ``d_model``.
        num_layers: encoder layers, each its own layer group.
        dim_feedforward: hidden width of each layer's feed-forward network.
        dropout: dropout after the positions, on the attention weights and in every residual branch.
        positional: ``sinusoidal`` (fixed, any length) or ``learned`` (up to ``input_shape[0]`` steps; a
            longer sequence raises ``ConfigError``).
        pool: ``cls``: the final state of a learned token prepended to every sequence; ``mean``: the mean
            of the real steps.

    Raises:
        ConfigError: for an ``input_shape`` that does not fit ``vocab_size``, or a bad choice.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (32, 3),
        vocab_size: Optional[int] = None,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        positional: Positional = "sinusoidal",
        pool: Pool = "cls",
    ) -> None:
        super().__init__()
        channels = sequence_channels("transformer", input_shape, vocab_size)
        if d_model % num_heads:
            raise ConfigError(f"transformer: d_model={d_model} must be a multiple of num_heads={num_heads}")
        if positional not in ("sinusoidal", "learned"):
            raise ConfigError(f"transformer: unknown positional {positional!r}; choose sinusoidal or learned")
        if pool not in ("cls", "mean"):
            raise ConfigError(f"transformer: unknown pool {pool!r}; choose cls or mean")
        if num_layers < 1:
            raise ConfigError(f"transformer needs at least one layer; got num_layers={num_layers}")
        self.input_shape, self.vocab_size = tuple(input_shape), vocab_size
        self.d_model, self.num_heads, self.num_layers = d_model, num_heads, num_layers
        self.positional, self.pool = positional, pool
        self.num_features = d_model

        self.embed = SequenceEmbedding(
            channels, vocab_size, d_model, self.input_shape[0], positional, pool == "cls", dropout
        )
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, num_heads, dim_feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_features(x, mask)

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token after the final norm, ``(B, T', d_model)``, and its mask ``(B, T')`` (CLS first if any)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        h, mask = self.embed(x, mask.bool())
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~mask)  # True in the key padding mask means "do not attend"
        return self.norm(h), mask

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h, mask = self.forward_tokens(x, mask)
        return h[:, 0] if self.pool == "cls" else masked_mean(h, mask)  # -> (B, d_model)

    def example_input(self, input_shape: tuple[int, ...], batch_size: int = 2) -> torch.Tensor:
        if self.vocab_size is not None:
            return torch.zeros(batch_size, *input_shape, dtype=torch.long)
        return super().example_input(input_shape, batch_size)

    def layer_groups(self) -> dict[str, nn.Module]:
        """``embed`` (projection, CLS token, positions), ``layer0`` ... ``layer{num_layers-1}``, ``norm``."""
        return {"embed": self.embed, **{f"layer{i}": layer for i, layer in enumerate(self.layers)}, "norm": self.norm}
