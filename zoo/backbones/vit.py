"""Vision Transformer (Dosovitskiy et al., 2021): patch tokens and a class token through pre-norm blocks.

``image -> PatchEmbed -> [CLS] + patches + learned positions -> [LN -> MHSA -> +, LN -> MLP -> +] x depth
-> LN -> pool``. Module and parameter names follow timm's ``VisionTransformer`` (with the stem under
``embed.``), so a timm state dict maps onto this one by renaming a few keys (``pos_embed`` drops its
leading batch axis).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError
from zoo.layers import LearnedPositionalEncoding, PatchEmbed
from zoo.registry import register_variant

Pool = Literal["cls", "mean"]
_POOLS = ("cls", "mean")


def _trunc_normal(t: torch.Tensor) -> None:
    nn.init.trunc_normal_(t, std=0.02)  # timm's init: bounds at +-2 (absolute), i.e. barely truncated


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability ``p``.

    Kept samples are scaled by ``1 / (1 - p)`` so the expected output is unchanged; in eval it is the identity.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # one draw per sample
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention over all tokens; every token is real, so no mask is needed."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # (B, N, 3D) -> (3, B, heads, N, D/heads)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, d)  # heads back side by side: (B, N, D)
        return self.proj_drop(self.proj(x))


class MLP(nn.Module):
    """The block's feed-forward part: ``Linear -> GELU -> dropout -> Linear -> dropout``, per token."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, dropout: float, attn_dropout: float, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_dropout, dropout)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ViTEmbedding(nn.Module):
    """The stem: patch tokens, a learned class token in front, learned position embeddings added.

    ``(B, C, H, W) -> (B, 1 + N, D)`` with ``N = (H / patch_size) * (W / patch_size)``.
    """

    def __init__(self, input_shape: tuple[int, int, int], patch_size: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(input_shape, patch_size, embed_dim)
        self.num_tokens = self.patch_embed.num_patches + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = LearnedPositionalEncoding(self.num_tokens, embed_dim)  # one vector per token
        self.pos_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        return self.pos_drop(self.pos_embed(x))


class ViTBackbone(Backbone):
    """A Vision Transformer; features are the final class token (``cls``) or the mean patch token (``mean``).

    Args:
        input_shape: ``(channels, height, width)`` of one image; both sides must be multiples of ``patch_size``.
        patch_size: side of each square patch; the sequence holds ``(H / p) * (W / p) + 1`` tokens.
        embed_dim: width of every token, and ``num_features``.
        depth: number of transformer blocks.
        num_heads: attention heads per block; must divide ``embed_dim``.
        mlp_ratio: hidden width of each block's MLP, as a multiple of ``embed_dim``.
        dropout: dropout after the position embeddings, in the MLPs and after attention's projection.
        attn_dropout: dropout on the attention weights.
        drop_path: stochastic depth rate of the last block; it rises linearly from 0 at the first.
        pool: ``cls`` takes the class token, ``mean`` averages the patch tokens (after the final norm).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (3, 224, 224),
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        pool: Pool = "cls",
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"vit expects images of shape (C, H, W), got input_shape={tuple(input_shape)}")
        if embed_dim % num_heads:
            raise ConfigError(f"vit: embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
        if pool not in _POOLS:
            raise ConfigError(f"vit: unknown pool {pool!r}; choose one of {list(_POOLS)}")
        if depth < 1:
            raise ConfigError(f"vit needs at least one block; got depth={depth}")
        channels, height, width = input_shape  # a list from YAML, too
        self.input_shape = (channels, height, width)
        self.patch_size, self.embed_dim, self.depth, self.num_heads = patch_size, embed_dim, depth, num_heads
        self.mlp_ratio, self.dropout, self.attn_dropout, self.drop_path = mlp_ratio, dropout, attn_dropout, drop_path
        self.pool = pool
        self.num_features = embed_dim

        self.embed = ViTEmbedding(self.input_shape, patch_size, embed_dim, dropout)
        self.num_tokens = self.embed.num_tokens
        rates = torch.linspace(0, drop_path, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.Sequential(
            *(Block(embed_dim, num_heads, mlp_ratio, dropout, attn_dropout, rate) for rate in rates)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm / DeiT: truncated normal(0.02) for linear weights and the class token, zero biases (the
        # position table inits itself the same way); LayerNorms start at (1, 0) and the patch
        # convolution keeps PyTorch's default.
        _trunc_normal(self.embed.cls_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal(m.weight)
                nn.init.zeros_(m.bias)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: ``(B, C, H, W) -> (B, num_tokens, embed_dim)``, class token first."""
        return self.norm(self.blocks(self.embed(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)  # (B, 1 + N, D)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)  # -> (B, D)

    def layer_groups(self) -> dict[str, nn.Module]:
        groups: dict[str, nn.Module] = {"embed": self.embed}
        groups.update({f"block{i}": block for i, block in enumerate(self.blocks)})
        groups["norm"] = self.norm
        return groups


# --- registered variants -------------------------------------------------------------------------------
# vit_tiny: the same shape as timm's ``vit_tiny_patch16_224`` (and DeiT-Tiny), ViTBackbone's defaults.
# vit_micro: 4x4 patches make 4 tokens of an 8x8 digit, 49 of a 28x28 and 64 of a 32x32 image (plus the class
# token), so it trains from scratch on a CPU.
_IMAGE: dict[str, Any] = {"family": "vit", "input_kind": "image"}
register_variant(
    "vit_tiny", ViTBackbone, **_IMAGE, description="ViT-Ti/16 (width 192, 12 blocks, 3 heads, 16x16 patches)."
)
register_variant(
    "vit_micro",
    ViTBackbone,
    **_IMAGE,
    description="Small ViT for 8x8 to 32x32 images (width 64, 6 blocks, 4x4 patches).",
    input_shape=(1, 8, 8),
    patch_size=4,
    embed_dim=64,
    depth=6,
    num_heads=4,
    mlp_ratio=2.0,
)
