"""Absolute position embeddings added to the patch tokens: learned (APE) and fixed sin-cos."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liere.encodings.base import PositionEncoding
from liere.encodings.positions import grid_positions
from liere.encodings.registry import register_encoding

_INTERPOLATION = {1: "linear", 2: "bicubic", 3: "trilinear"}


def resample_table(table: Tensor, grid_from: Sequence[int], grid_to: Sequence[int]) -> Tensor:
    """An APE table (1, N, D) of ``grid_from`` resampled to ``grid_to`` (linear / bicubic / trilinear
    by the number of axes, ``align_corners=False`` as DeiT's ``--finetune`` interpolation)."""
    table_in = table.reshape(1, *grid_from, -1).movedim(-1, 1)  # (1, D, *grid_from)
    mode = _INTERPOLATION[len(grid_from)]
    out = F.interpolate(table_in.float(), size=tuple(grid_to), mode=mode, align_corners=False)
    return out.flatten(2).transpose(1, 2).to(table.dtype)  # (1, N', D)


@register_encoding("ape")
class LearnedAPE(PositionEncoding):
    """One learned vector per cell of the training grid (Dosovitskiy et al., ICLR 2021).

    Other grids get the table resampled (linear / bicubic / trilinear, as is usual for ViTs).
    """

    def __init__(self, **geometry) -> None:
        super().__init__(**geometry)
        if self.grid_shape is None:
            raise ValueError("ape needs grid_shape (the training grid) to size its table")
        dim = self.head_dim * self.num_heads
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.grid_shape), dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def table(self, grid_shape: Sequence[int]) -> Tensor:
        """(1, N, D) embedding for ``grid_shape``: the table itself, or resampled from it."""
        grid_shape = tuple(grid_shape)
        if grid_shape == self.grid_shape:
            return self.pos_embed
        if len(grid_shape) != self.num_axes:
            raise ValueError(f"grid {grid_shape} has {len(grid_shape)} axes; encoding has {self.num_axes}")
        return resample_table(self.pos_embed, self.grid_shape, grid_shape)

    def embed(self, tokens: Tensor, grid_shape: Sequence[int]) -> Tensor:
        return tokens + self.table(grid_shape).to(tokens.dtype)

    def apply_flops(self, num_tokens: int) -> int:
        return num_tokens * self.head_dim * self.num_heads  # one addition per channel


def sincos_table(grid_shape: Sequence[int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed N-d sin-cos embedding (N, dim) of integer patch indices: each axis owns an equal,
    even share of the channels (half sines, half cosines, geometric frequencies); leftovers are 0."""
    pos = grid_positions(grid_shape, scheme="index", dtype=torch.float64)  # (N, A)
    num_axes = pos.shape[1]
    per_axis = (dim // num_axes) // 2 * 2
    if per_axis == 0:
        raise ValueError(f"ape_sincos: embed dim {dim} is too small for {num_axes} axes")
    omega = temperature ** (-torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis // 2))
    table = torch.zeros(pos.shape[0], dim, dtype=torch.float64)
    for a in range(num_axes):
        phase = pos[:, a : a + 1] * omega  # (N, per_axis / 2)
        table[:, a * per_axis : (a + 1) * per_axis] = torch.cat([phase.sin(), phase.cos()], dim=1)
    return table.float()


@register_encoding("ape_sincos")
class SinCosAPE(PositionEncoding):
    """Fixed sin-cos absolute embedding, computed for any grid (no resampling needed)."""

    def __init__(self, *, temperature: float = 10000.0, **geometry) -> None:
        super().__init__(**geometry)
        self.temperature = temperature
        self._tables: dict[tuple, Tensor] = {}

    def embed(self, tokens: Tensor, grid_shape: Sequence[int]) -> Tensor:
        key = (tuple(grid_shape), tokens.device)
        if key not in self._tables:
            if len(grid_shape) != self.num_axes:
                raise ValueError(
                    f"grid {tuple(grid_shape)} has {len(grid_shape)} axes; encoding has {self.num_axes}"
                )
            self._tables[key] = sincos_table(grid_shape, tokens.shape[-1], self.temperature).to(tokens.device)
        return tokens + self._tables[key].to(tokens.dtype)

    def apply_flops(self, num_tokens: int) -> int:
        return num_tokens * self.head_dim * self.num_heads
