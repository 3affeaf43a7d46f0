"""Recurrent networks (Elman RNN, LSTM, GRU) over variable-length, end-padded sequences.

``(B, T, C) floats or (B, T) token ids -> [embed] -> RNN layer x num_layers -> pool -> (B, num_features)``.

Padded batches are packed (``pack_padded_sequence``, lengths from the mask), so padding never enters the
recurrence: a sample's features are the same alone or in a padded batch. Stacked layers are built as one
single-layer ``nn.LSTM`` (``nn.GRU``, ``nn.RNN``) per layer, with dropout between them, so that each layer is
its own layer group (``layer0``, ``layer1``, ...) and progressive unfreezing can go layer by layer; the
result is the same network as one ``nn.LSTM(num_layers=...)``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError, DataError
from zoo.layers import AttentionPool, masked_max, masked_mean, sequence_channels
from zoo.registry import register_variant

Cell = Literal["rnn", "lstm", "gru"]
Pool = Literal["last", "mean", "max", "attention"]
Nonlinearity = Literal["tanh", "relu"]
_CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
_POOLS = ("last", "mean", "max", "attention")


def lengths_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Real steps per sequence, ``(B, T) -> (B,)`` on the CPU (where packing wants them).

    Raises:
        DataError: if padding is not all at the end of a sequence, or a sequence has no real step.
    """
    lengths = mask.sum(dim=1)
    steps = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, steps < lengths.unsqueeze(1)):
        raise DataError("sequence masks must be True at the real steps, then False at padding: padding goes at the end")
    lengths = lengths.cpu()
    if lengths.min() < 1:
        raise DataError("a sequence in the batch has no real step (its mask is all False)")
    return lengths


class RNNBackbone(Backbone):
    """A stack of recurrent layers; features are the last real step, or a pooling of every real step.

    Args:
        input_shape: ``(T, C)`` for time series, or ``(T,)`` for token ids (with ``vocab_size``).
        vocab_size: number of token ids; when set, inputs are ids embedded by an ``nn.Embedding`` whose
            row 0 is padding (kept at zero).
        cell: ``rnn`` (Elman), ``lstm`` or ``gru``.
        hidden_size: units per direction in every layer.
        num_layers: stacked recurrent layers, each its own layer group.
        bidirectional: run each layer forwards and backwards; doubles ``num_features``.
        dropout: dropout on the outputs of every layer but the last (as ``nn.LSTM``'s ``dropout``).
        embed_dim: width of the token embedding (token input only).
        pool: ``last``: the last real step (bidirectional: the forward direction at the last real step
            concatenated with the backward direction at step 0, i.e. each direction's final state);
            ``mean`` / ``max``: over the real steps of the last layer's outputs; ``attention``: their
            weighted mean, scored against a learned query (masked softmax).
        nonlinearity: ``tanh`` or ``relu``, for the ``rnn`` cell only.

    LSTM forget-gate biases start at 1 (Jozefowicz et al., 2015), so memory is kept early in training.

    Raises:
        ConfigError: for an ``input_shape`` that does not fit ``vocab_size``, or a bad choice.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (32, 3),
        vocab_size: Optional[int] = None,
        cell: Cell = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        embed_dim: int = 64,
        pool: Pool = "last",
        nonlinearity: Nonlinearity = "tanh",
    ) -> None:
        super().__init__()
        if cell not in _CELLS:
            raise ConfigError(f"unknown recurrent cell {cell!r}; choose one of {list(_CELLS)}")
        if pool not in _POOLS:
            raise ConfigError(f"{cell}: unknown pool {pool!r}; choose one of {list(_POOLS)}")
        if num_layers < 1:
            raise ConfigError(f"{cell} needs at least one layer; got num_layers={num_layers}")
        channels = sequence_channels(cell, input_shape, vocab_size)
        self.input_shape, self.vocab_size = tuple(input_shape), vocab_size
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.bidirectional, self.pool, self.embed_dim = bidirectional, pool, embed_dim

        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0) if vocab_size is not None else None
        width = embed_dim if channels is None else channels  # None: token ids, embedded
        extra: dict[str, Any] = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            self.layers.append(_CELLS[cell](width, hidden_size, batch_first=True, bidirectional=bidirectional, **extra))
            width = hidden_size * (2 if bidirectional else 1)
        self.dropout = nn.Dropout(dropout)
        self.attention = AttentionPool(width) if pool == "attention" else None
        self.num_features = width
        if cell == "lstm":  # gates are stacked (input, forget, cell, output); ih + hh biases sum to 1
            for name, p in self.layers.named_parameters():
                if "bias" in name:
                    nn.init.zeros_(p)
                    if "bias_ih" in name:
                        nn.init.ones_(p[hidden_size : 2 * hidden_size])

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_features(x, mask)

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, steps = x.shape[:2]
        if mask is None:  # every step is real: the same code path, so the result equals an all-True mask
            mask = torch.ones(batch, steps, dtype=torch.bool, device=x.device)
        mask = mask.bool()
        lengths = lengths_from_mask(mask)
        if self.embed is not None:
            x = self.embed(x)  # (B, T) ids -> (B, T, embed_dim)
        h = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        for i, layer in enumerate(self.layers):
            if i:
                h = PackedSequence(self.dropout(h.data), h.batch_sizes, h.sorted_indices, h.unsorted_indices)
            h, state = layer(h)
        if self.pool == "last":
            final = state[0] if isinstance(state, tuple) else state  # LSTM: (h_n, c_n); (dirs, B, hidden)
            # Packing stops each sequence at its own length: forward's final state is its last real step,
            # backward's final state is step 0. In the input's batch order (enforce_sorted=False restores it).
            return torch.cat(list(final), dim=-1)  # -> (B, num_features)
        out, _ = pad_packed_sequence(h, batch_first=True, total_length=steps)  # (B, T, num_features), 0 at padding
        if self.pool == "mean":
            return masked_mean(out, mask)
        if self.pool == "max":
            return masked_max(out, mask)
        assert self.attention is not None  # pool == "attention"
        return self.attention(out, mask)

    def example_input(self, input_shape: tuple[int, ...], batch_size: int = 2) -> torch.Tensor:
        if self.vocab_size is not None:
            return torch.zeros(batch_size, *input_shape, dtype=torch.long)
        return super().example_input(input_shape, batch_size)

    def layer_groups(self) -> dict[str, nn.Module]:
        """``embed`` (token input only), ``layer0`` ... ``layer{num_layers-1}``, ``pool`` (attention only).

        Groups without parameters are left out: mean, max and last pooling have none.
        """
        groups: dict[str, nn.Module] = {"embed": self.embed} if self.embed is not None else {}
        groups.update({f"layer{i}": layer for i, layer in enumerate(self.layers)})
        if self.attention is not None:
            groups["pool"] = self.attention
        return groups


# --- registered variants: one per cell (nonlinearity is the Elman RNN's) ---------------------------------
_SEQUENCE = {"family": "rnn", "input_kind": "sequence"}
_FEATURES = "over variable-length sequences; features from the last real step or pooled."
register_variant("rnn", RNNBackbone, **_SEQUENCE, fixed={"cell": "rnn"}, description=f"Elman RNN {_FEATURES}")
register_variant(
    "lstm", RNNBackbone, **_SEQUENCE, fixed={"cell": "lstm", "nonlinearity": "tanh"}, description=f"LSTM {_FEATURES}"
)
register_variant(
    "gru", RNNBackbone, **_SEQUENCE, fixed={"cell": "gru", "nonlinearity": "tanh"}, description=f"GRU {_FEATURES}"
)
