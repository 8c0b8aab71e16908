"""Building blocks of the N-d ViT: patch embedding, rotary attention, MLP, pre-norm block."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liere.encodings.base import RotationState
from liere.models.patches import patchify


class PatchEmbed(nn.Module):
    """Non-overlapping patches (2D) or tubelets (3D) -> tokens, one N-d path for every rank.

    (B, C, S_1..S_n) -> (B, N, D), N = prod(S_i / P_i) in row-major grid order. The linear map on
    flattened patches is the same operator as a stride-P convolution.
    """

    def __init__(self, patch_size: Sequence[int], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.in_chans = in_chans
        self.proj = nn.Linear(in_chans * math.prod(self.patch_size), embed_dim)

    def grid(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Patch grid of an input of spatial size ``spatial``; errors name the offending axis."""
        spatial = tuple(spatial)
        if len(spatial) != len(self.patch_size):
            raise ValueError(
                f"input has {len(spatial)} spatial axes {spatial} but the model patches "
                f"{len(self.patch_size)} axes (patch_size={self.patch_size})"
            )
        for axis, (s, p) in enumerate(zip(spatial, self.patch_size)):
            if s % p or s == 0:
                raise ValueError(
                    f"input size {s} on spatial axis {axis} is not a positive multiple of patch size {p}"
                )
        return tuple(s // p for s, p in zip(spatial, self.patch_size))

    def forward(self, x: Tensor) -> Tensor:
        _, C, *spatial = x.shape
        if C != self.in_chans:
            raise ValueError(f"input has {C} channels, the model expects in_chans={self.in_chans}")
        self.grid(spatial)  # errors name the axis
        return self.proj(patchify(x, self.patch_size).flatten(2))  # (B, N, C, *P) -> (B, N, C * prod(P))


class Attention(nn.Module):
    """Multi-head self-attention; q and k rotated by the layer's rotations, then SDPA."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)

    def forward(self, x: Tensor, rotation: RotationState | None, layer: int) -> Tensor:
        B, T, D = x.shape
        qkv = (
            self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 1, 3, 4)
        )  # (3, B, T, H, d)
        if rotation is not None:
            qk = rotation.apply(qkv[:2], layer)  # q and k in one call; v is not rotated
            q, k, v = qk[0], qk[1], qkv[2]
        else:
            q, k, v = qkv.unbind(0)
        # (B, T, H, d) in memory, seen as (B, H, T, d): the layout SDPA's CPU flash kernel reads directly
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, T, D)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): drop the residual branch per sample with prob. p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = drop_path

    def forward(self, x: Tensor, rotation: RotationState | None, layer: int) -> Tensor:
        x = x + drop_path(self.ls1(self.attn(self.norm1(x), rotation, layer)), self.drop_path, self.training)
        return x + drop_path(self.ls2(self.mlp(self.norm2(x))), self.drop_path, self.training)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path}"


class LayerScale(nn.Module):
    """A learned per-channel gain on a residual branch, initialised to ``init`` (Touvron et al., "Going
    deeper with image transformers", ICCV 2021; DeiT III's ``Layer_scale_init_Block``, gamma = 1e-4)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.init = float(init)
        self.gamma = nn.Parameter(torch.full((dim,), self.init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma  # (..., D) * (D,)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init)
