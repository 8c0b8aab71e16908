"""How far a rotary encoding turns between neighbouring patches, and how relative its logits are.

Two statistics of an encoding's parameters on a grid, used to compare initialisations
(``benchmarks/rotation_angles.py``, docs/results.md):

- **per-step angles**: every rotation frequency of every axis's generator (the |eigenvalues| of the
  skew-symmetric block, one per 2-d invariant plane) times the spacing of one patch step along that
  axis under the encoding's position scheme. Above pi, neighbouring patches alias: a step rotates
  further than half a turn in that plane;
- **relative share**: for random q and k, the share of the variance of the logits
  ``q^T R(p_i)^T R(p_j) k`` over all token pairs (i, j) that the integer offset ``j - i`` explains
  (between-offset variance / total variance, averaged over draws, layers and heads). It is 1 for
  commuting generators (RoPE, STRING, ComRoPE: ``R(p_i)^T R(p_j) = R(p_j - p_i)``) and falls below 1
  when LieRE's generators fail to commute at the scale of the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from liere.encodings.base import RotaryEncoding
from liere.encodings.positions import grid_positions


def axis_steps(scheme: str, grid_shape: Sequence[int], train_grid_shape: Sequence[int] | None) -> list[float]:
    """The distance between neighbouring cells along each axis of ``grid_shape`` under ``scheme``
    (1.0 for an axis of one cell: it has no neighbours, so the frequency itself is reported)."""
    pos = grid_positions(grid_shape, train_grid_shape, scheme, dtype=torch.float64)
    steps = []
    for a, size in enumerate(grid_shape):
        stride = int(torch.tensor(list(grid_shape[a + 1 :]), dtype=torch.long).prod())
        steps.append(float(pos[stride, a] - pos[0, a]) if size > 1 else 1.0)
    return steps


def step_angles(encoding: RotaryEncoding, grid_shape: Sequence[int] | None = None) -> Tensor:
    """Every rotation frequency of the generators times one patch step of ``grid_shape`` (default:
    the training grid), flattened (float64, radians). One value per invariant plane of every block."""
    grid = tuple(grid_shape or encoding.grid_shape)
    gens = encoding.generator_matrices().detach().double()  # (A, L, H, K, g, g), skew-symmetric
    steps = axis_steps(encoding.position_scheme, grid, encoding.position_reference)
    sv = torch.linalg.svdvals(gens)  # |eigenvalues|, in equal pairs, descending: (A, L, H, K, g)
    planes = sv[..., 0 : 2 * (sv.shape[-1] // 2) : 2]  # one per pair (an odd block's last is 0)
    scale = torch.tensor(steps, dtype=torch.float64).view(-1, *([1] * (planes.dim() - 1)))
    return (planes * scale).flatten()


def angle_summary(angles: Tensor) -> dict[str, float]:
    """Median and max per-step angle and the share above pi (aliasing)."""
    return {
        "median": float(angles.median()),
        "max": float(angles.max()),
        "above_pi": float((angles > torch.pi).double().mean()),
    }


@torch.no_grad()
def relative_share(
    encoding: RotaryEncoding, grid_shape: Sequence[int] | None = None, *, draws: int = 64, seed: int = 0
) -> float:
    """Share of the q.k logit variance over token pairs explained by their integer grid offset."""
    grid = tuple(grid_shape or encoding.grid_shape)
    pos = encoding.positions(grid)
    rot = encoding.rotation(pos).double()  # (L, H, N, K, g, g)
    L, H, N, K, g, _ = rot.shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(draws, H, K, g, generator=gen, dtype=torch.float64)
    k = torch.randn(draws, H, K, g, generator=gen, dtype=torch.float64)
    rq = torch.einsum("lhnkij,shkj->slhnki", rot, q)
    rk = torch.einsum("lhnkij,shkj->slhnki", rot, k)
    logits = torch.einsum("slhnki,slhmki->slhnm", rq, rk).reshape(draws * L * H, N * N)
    offsets = _offset_ids(grid)  # (N * N,) one id per integer offset j - i
    groups = int(offsets.max()) + 1
    count = torch.bincount(offsets, minlength=groups).double()
    sums = torch.zeros(logits.shape[0], groups, dtype=torch.float64).index_add_(1, offsets, logits)
    means = (sums / count)[:, offsets]  # every pair's offset mean
    centred = logits - logits.mean(dim=1, keepdim=True)
    total = centred.pow(2).sum(dim=1)
    within = (logits - means).pow(2).sum(dim=1)
    varies = total > 1e-12 * logits.pow(2).sum(dim=1)  # a head without rotation has constant logits
    return float((1 - within[varies] / total[varies]).mean()) if bool(varies.any()) else math.nan


def _offset_ids(grid: Sequence[int]) -> Tensor:
    """For every ordered token pair (i, j) of a row-major grid, an integer id of the offset j - i."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(s) for s in grid], indexing="ij"), -1).reshape(
        -1, len(grid)
    )
    diff = idx[None, :, :] - idx[:, None, :]  # (N, N, A)
    spans = torch.tensor([2 * s - 1 for s in grid])
    shifted = diff + torch.tensor([s - 1 for s in grid])
    weights = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), spans[:-1]]), 0)
    return (shifted * weights).sum(-1).reshape(-1)
