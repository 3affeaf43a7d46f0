"""Tabular MLP: numeric columns and embedded categorical codes, as fastai's tabular learner.

Tabular data (:class:`datamodules.TabularCSV`) arrive as one float tensor ``(B, n_numeric + n_categorical)``:
standardised numbers and 0/1 missing-indicators first, then one integer code per categorical column (0: missing
or unseen). One float tensor keeps every tool of the zoo working unchanged (batching, the model summary,
exports); the backbone learns where the codes are from ``categories``, linked from the data.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from zoo.backbones.base import Backbone
from zoo.backbones.mlp import Norm
from zoo.errors import ConfigError
from zoo.layers import Activation, Init, init_weights, make_activation
from zoo.registry import register_backbone

# Floats hold every integer up to 2**(mantissa bits + 1) exactly; codes above that would be read as others.
_EXACT_CODES = {torch.float16: 2048, torch.bfloat16: 256}


def embedding_size(cardinality: int, max_size: int = 600) -> int:
    """fastai's rule of thumb for an embedding's width: ``min(600, round(1.6 * n ** 0.56))``."""
    return min(max_size, round(1.6 * cardinality**0.56))


class CategoryEmbedding(nn.Module):
    """One embedding per categorical column, concatenated: codes ``(B, k)`` -> ``(B, sum of widths)``."""

    def __init__(self, categories: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(n, embedding_size(n)) for n in categories)
        for embed in self.embeds:
            nn.init.trunc_normal_(embed.weight, std=0.01)  # fastai's: small, so codes start close to each other
        self.dropout = nn.Dropout(dropout)
        self.num_features = sum(e.embedding_dim for e in self.embeds)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.cat([embed(codes[:, i]) for i, embed in enumerate(self.embeds)], dim=1))


@register_backbone("tabular_mlp", family="mlp", input_kind="vector")
class TabularMLPBackbone(Backbone):
    """MLP over tables: categorical codes embedded, then ``Linear -> activation -> norm -> dropout`` per layer.

    Args:
        input_shape: ``(n_columns,)``: numeric columns first, then the ``len(categories)`` code columns.
        categories: cardinality of each categorical column, code 0 (missing / unseen) included; linked from
            the data. None: every column is numeric, and this is a plain MLP.
        hidden_sizes: width of each hidden layer; the last one is ``num_features``.
        activation: non-linearity between layers.
        dropout: dropout probability after each hidden layer.
        embedding_dropout: dropout on the concatenated embeddings.
        norm: normalisation after each hidden layer's activation (fastai's order), or ``none``.
        init: weight initialisation of the linear layers (embeddings start at N(0, 0.01), as fastai's).
        init_std: the standard deviation of the ``normal`` scheme's weights.
        bias_init: the value every bias starts at (any scheme but ``default``).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (16,),
        categories: Optional[list[int]] = None,
        hidden_sizes: tuple[int, ...] = (200, 100),
        activation: Activation = "relu",
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        norm: Norm = "batch",
        init: Init = "kaiming_normal",
        init_std: float = 0.02,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ConfigError("tabular_mlp needs at least one hidden size; set hidden_sizes, e.g. [200, 100]")
        categories = list(categories or [])
        num_columns = math.prod(input_shape)
        if len(categories) > num_columns or any(n < 1 for n in categories):
            raise ConfigError(
                f"tabular_mlp: categories={categories} do not fit input_shape={tuple(input_shape)}: "
                "one cardinality (at least 1) per categorical column, the input's last "
                "columns"
            )
        self.categories = categories
        self.num_numeric = num_columns - len(categories)
        self.embed = CategoryEmbedding(categories, embedding_dropout) if categories else None
        # Not in the state dict: it follows from `categories`, which rebuilds the model.
        self.register_buffer("cardinalities", torch.tensor(categories, dtype=torch.long), persistent=False)
        in_features = self.num_numeric + (self.embed.num_features if self.embed is not None else 0)
        blocks = []
        for width in hidden_sizes:
            layers: list[nn.Module] = [nn.Linear(in_features, width), make_activation(activation)]
            if norm == "batch":
                layers.append(nn.BatchNorm1d(width))
            elif norm == "layer":
                layers.append(nn.LayerNorm(width))
            layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            in_features = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = hidden_sizes[-1]
        init_weights(self.blocks, init, activation, init_std, bias_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, n_numeric + n_categorical)
        if self.embed is None:
            return self.blocks(x)
        exact = _EXACT_CODES.get(x.dtype)
        if exact is not None and max(self.categories) > exact:
            raise ConfigError(
                f"tabular_mlp: a categorical column has {max(self.categories)} codes, more than "
                f"{x.dtype} inputs hold exactly ({exact}); use trainer.precision: bf16-mixed or "
                "32-true"
            )
        codes = x[:, self.num_numeric :].round().long()  # (B, n_categorical)
        # A code outside a column's range is a category the data never had: code 0, as the datamodule maps those
        # (random check batches of `zoo export` hold such codes).
        codes = torch.where((codes >= 0) & (codes < self.cardinalities), codes, torch.zeros_like(codes))
        return self.blocks(torch.cat([x[:, : self.num_numeric], self.embed(codes).to(x.dtype)], dim=1))

    def layer_groups(self) -> dict[str, nn.Module]:
        """``embed`` (with categorical columns only), then ``block0``, ``block1``, ..."""
        groups: dict[str, nn.Module] = {"embed": self.embed} if self.embed is not None else {}
        groups.update({f"block{i}": block for i, block in enumerate(self.blocks)})
        return groups
