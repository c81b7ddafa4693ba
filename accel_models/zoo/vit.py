"""A small Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words", arXiv:2010.11929).

Patch embedding (a ``patch_size`` x ``patch_size`` conv with that stride, flattened to tokens
``N x L x D``), a learned class token prepended with ``expand`` + ``cat``, a learned position
embedding added, ``depth`` pre-norm encoder blocks (LayerNorm, multi-head self-attention, residual
add; LayerNorm, MLP with GELU, residual add), a final LayerNorm and a Linear head on the class
token. The attention is written the way timm writes it: one ``qkv`` Linear reshaped to
``3 x N x heads x L x head_dim``, ``(q * scale) @ k^T``, ``softmax``, ``@ v``, heads merged with
``transpose`` + ``reshape``; ``fused_attn=True`` uses ``F.scaled_dot_product_attention`` instead.

``patch_size=None`` picks the largest of 8, 7, 4, 2 that divides both sides and leaves a grid at
least 4 patches wide, else 1: 8x8 digits get 2 x 2 patches, 28x28 7 x 7, 32x32 8 x 8, each a 4 x 4
grid (16 tokens and the class token: a few CPU minutes for Fashion-MNIST; 4 x 4 patches of 28x28
cost 2.7 times as much per step).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sysarray.validation import check_bool, check_float, check_positive_int

from ._registry import check_input_shape, register_model


def default_patch_size(height: int, width: int, sizes: Sequence[int] = (8, 7, 4, 2), min_grid: int = 4) -> int:
    """The largest of ``sizes`` that divides both sides and leaves at least ``min_grid`` patches a side, else 1."""
    for p in sizes:
        if height % p == 0 and width % p == 0 and min(height, width) // p >= min_grid:
            return p
    return 1


class PatchEmbed(nn.Module):
    """``N x C x H x W`` images -> ``N x L x D`` patch tokens, one strided conv."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        torch._assert(h == self.img_size[0], f"Input height ({h}) doesn't match model ({self.img_size[0]}).")
        torch._assert(w == self.img_size[1], f"Input width ({w}) doesn't match model ({self.img_size[1]}).")
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2)  # NCHW -> NLC


class Attention(nn.Module):
    """Multi-head self-attention over ``N x L x D`` tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, fused_attn: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"The embedding width {dim} must be a multiple of the number of heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return self.proj_drop(x)


class Mlp(nn.Module):
    """Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))


class Block(nn.Module):
    """A pre-norm encoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float = 0.0, fused_attn: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop=drop, proj_drop=drop, fused_attn=fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


@register_model("vit")
class VisionTransformer(nn.Module):
    """``N x C x H x W`` float images -> ``N x num_classes`` logits.

    ``embed_dim`` D, ``depth`` blocks, ``num_heads`` heads of D / heads, an MLP of ``mlp_ratio`` x D,
    ``dropout`` after the position embedding and in every block (0 disables it). The defaults
    (D = 64, 4 blocks, 4 heads, ratio 2) have about 0.14 M weights.
    """

    num_prefix_tokens = 1  # the class token; a distilled variant adds one more

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        patch_size: int | None = None,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        (c, h, w), num_classes = check_input_shape(input_shape, num_classes, "vit")
        patch_size = default_patch_size(h, w) if patch_size is None else check_positive_int(patch_size, "patch_size", "vit")
        if h % patch_size or w % patch_size:
            raise ValueError(f"The 'patch_size' argument of vit must divide the input's sides {h} x {w}. Got {patch_size} instead.")
        embed_dim = check_positive_int(embed_dim, "embed_dim", "vit")
        depth = check_positive_int(depth, "depth", "vit")
        num_heads = check_positive_int(num_heads, "num_heads", "vit")
        if embed_dim % num_heads:
            raise ValueError(f"The 'embed_dim' argument of vit must be a multiple of num_heads={num_heads}. Got {embed_dim} instead.")
        mlp_ratio = check_float(mlp_ratio, "mlp_ratio", "vit", lo=0.0, lo_open=True)
        dropout = check_float(dropout, "dropout", "vit", lo=0.0, hi=1.0, hi_open=True)
        fused_attn = check_bool(fused_attn, "fused_attn", "vit")
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed((h, w), patch_size, c, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(p=dropout)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, dropout, fused_attn) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) class token and position embedding; torch's default init elsewhere.

        timm's std-0.02 Linear init leaves the class token near-constant for the first epochs on
        small data sets (digits' loss stayed at ln 10 for three epochs); torch's default does not.
        """
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]  # the class token
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)
