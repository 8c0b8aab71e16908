"""N-d patches: sizes given as an int or one entry per axis, and inputs cut into patches and back.

One home for what the patch embedding, patch shuffling and the data transforms share (torch only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor


def to_ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """An int -> ``n`` equal entries; a sequence -> a tuple of ints, checked to have ``n`` entries."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name}={value} has {len(value)} entries, expected {n} (one per spatial axis)")
    return value


def patchify(x: Tensor, patch_size: Sequence[int]) -> Tensor:
    """(B, C, S_1..S_n) -> (B, N, C, P_1..P_n): the patches in row-major grid order, N = prod(S_i / P_i).

    Every S_i must be a multiple of P_i (``PatchEmbed.grid`` names the offending axis first).
    """
    B, C, *spatial = x.shape
    patch_size = tuple(patch_size)
    if len(patch_size) != len(spatial) or any(s % p for s, p in zip(spatial, patch_size)):
        raise ValueError(f"input {tuple(spatial)} is not a whole grid of {patch_size} patches")
    grid = [s // p for s, p in zip(spatial, patch_size)]
    n = len(grid)
    # (B, C, g1, p1, ..., gn, pn) -> (B, g1..gn, C, p1..pn) -> (B, N, C, p1..pn)
    x = x.reshape([B, C] + [v for pair in zip(grid, patch_size) for v in pair])
    order = [0] + [2 + 2 * i for i in range(n)] + [1] + [3 + 2 * i for i in range(n)]
    return x.permute(order).reshape(B, math.prod(grid), C, *patch_size)


def unpatchify(patches: Tensor, grid: Sequence[int]) -> Tensor:
    """(B, N, C, P_1..P_n) in row-major order over ``grid`` (g_1..g_n) -> (B, C, g_1 P_1, ..., g_n P_n)."""
    B, N, C, *patch_size = patches.shape
    n = len(grid)
    if len(patch_size) != n or math.prod(grid) != N:
        raise ValueError(f"{N} patches of {tuple(patch_size)} do not fill the grid {tuple(grid)}")
    # (B, g1..gn, C, p1..pn) -> (B, C, g1, p1, ..., gn, pn) -> (B, C, g1 p1, ..., gn pn)
    x = patches.reshape(B, *grid, C, *patch_size)
    order = [0, n + 1] + [v for i in range(n) for v in (1 + i, n + 2 + i)]
    return x.permute(order).reshape(B, C, *(g * p for g, p in zip(grid, patch_size)))
