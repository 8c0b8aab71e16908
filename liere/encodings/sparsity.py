"""Learned sparsity of LieRE generators: a group-lasso penalty over tiles, and what it learned.

The LieRE paper fixes the block size g of the generators (g = 8 beats dense g = 64 on its
benchmarks) but leaves open which couplings between head channels a model actually needs. Here a
dense (or coarsely blocked) generator is cut into t x t tiles; each coupling group is the tile
pair (i, j) and (j, i) (equal norms: the generator is skew), taken over all position axes jointly.
The penalty is the sum of the groups' Frobenius norms (the group lasso, Yuan & Lin 2006, "Model
selection and estimation in regression with grouped variables"), which drives whole couplings to
zero; the report counts, per layer, the groups still active. As Yuan & Lin do, each group's norm is
weighted by the square root of its size: a tile on the diagonal holds t(t-1)/2 free entries per
axis, a pair off it t^2, so the diagonal gets sqrt((t-1)/(2t)) of the weight (0.66 at t = 8).
Unweighted, the diagonal tiles (LieRE_8's own couplings, when t = 8) would be the first to go for
no reason but their size: at initialisation their norms are that factor smaller.

Under Adam a penalty added to the loss shrinks every group at about the same rate (each entry's
step is divided by its own gradient scale), so groups approach zero without reaching it. The
proximal alternative, ``group_soft_threshold``, acts on the weights after each optimizer step:
every group's norm falls by a fixed amount, and a group smaller than that becomes exactly 0
(proximal gradient methods for the group lasso, e.g. Parikh & Boyd 2014, "Proximal Algorithms").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from liere.encodings.liere import LieRE


def tile_group_norms(generators: Tensor, tile: int) -> Tensor:
    """Generators (num_axes, L, H, K, g, g) -> group norms (L, H, K, g/t, g/t), symmetric.

    Entry (i, j) is the Frobenius norm of tiles (i, j) and (j, i) over all axes; i == j is a
    diagonal tile (couplings inside one group of t channels).
    """
    g = generators.shape[-1]
    if tile < 1 or g % tile:
        raise ValueError(f"sparsity tile {tile} must divide the generator block size {g}")
    n = g // tile
    a, L, H, K = generators.shape[:4]
    tiles = generators.reshape(a, L, H, K, n, tile, n, tile)
    sq = tiles.square().sum(dim=(0, 5, 7))  # (L, H, K, n, n): squared norm of each tile over axes
    pair = sq + sq.transpose(-1, -2)  # off the diagonal a group holds both tiles of the pair
    pair = pair - torch.diag_embed(sq.diagonal(dim1=-2, dim2=-1))  # on it, the one tile
    return pair.clamp_min(1e-24).sqrt()


ZERO = 1e-9  # a group norm at or below this is exactly 0 (``tile_group_norms`` clamps to 1e-12)


def coupling_mask(n: int, device=None) -> Tensor:
    """(n, n) bool: every coupling group once, the upper triangle of the tile grid with its diagonal."""
    return torch.triu(torch.ones(n, n, dtype=torch.bool, device=device))


@torch.no_grad()
def group_soft_threshold(encoding: LieRE, upper: Tensor, tile: int, amount: float) -> tuple[Tensor, Tensor]:
    """The encoding's upper-triangle parameter ``upper`` with every coupling group's norm (as
    ``tile_group_norms`` measures it) lowered by ``amount`` times its ``group_weights``: groups at
    or below that become exactly 0, the others keep their direction. Returns a new tensor of
    ``upper``'s shape and dtype, and the share of groups (each coupling once) that are 0, a 0-dim
    tensor on ``upper``'s device (read it only when it is logged: no host sync each step)."""
    enc = _liere(encoding)
    u = upper.float()
    norms = tile_group_norms(enc.skew(u), tile)  # (L, H, K, n, n), symmetric
    n = norms.shape[-1]
    scale = (1.0 - amount * group_weights(n, tile, norms.device) / norms).clamp_min(0.0)
    rows, cols = enc._rows // tile, enc._cols // tile  # each upper entry's tile pair (i <= j)
    zero = (scale[..., coupling_mask(n, norms.device)] == 0).float().mean()
    return (u * scale[..., rows, cols].unsqueeze(0)).to(upper.dtype), zero


def group_weights(n: int, tile: int, device=None) -> Tensor:
    """(n, n): each group's weight in the penalty, sqrt(free entries / tile^2): 1 for a pair of
    tiles off the diagonal, sqrt((tile - 1) / (2 tile)) for a tile on it."""
    w = torch.ones(n, n, device=device)
    w.diagonal().fill_(math.sqrt((tile - 1) / (2 * tile)))
    return w


def _liere(encoding: Any) -> LieRE:
    if not isinstance(encoding, LieRE):
        raise TypeError(f"learned sparsity needs a LieRE encoding, got {type(encoding).__name__}")
    return encoding


def group_penalty(encoding: LieRE, tile: int) -> Tensor:
    """Sum of the weighted group norms (``group_weights``; each coupling once: the upper triangle with
    its diagonal), divided by the number of generators (layers x heads x blocks), so a weight means
    the same at every depth."""
    norms = tile_group_norms(_liere(encoding).generator_matrices().float(), tile)
    n = norms.shape[-1]
    weighted = norms * group_weights(n, tile, norms.device)
    return weighted[..., coupling_mask(n, norms.device)].sum() / norms[..., 0, 0].numel()


@torch.no_grad()
def sparsity_report(encoding: LieRE, tile: int, threshold: float) -> dict[str, Any]:
    """Per layer: the share of coupling groups whose norm is at least ``threshold`` times the largest
    group norm of the same generator (layer, head, block), off the diagonal and on it."""
    enc = _liere(encoding)
    norms = tile_group_norms(enc.generator_matrices().float(), tile)  # (L, H, K, n, n)
    n = norms.shape[-1]
    peak = norms.amax(dim=(-1, -2), keepdim=True)
    active = (norms >= threshold * peak) & (norms > ZERO)  # a group at 0 is off, even where all are
    off = torch.triu(torch.ones(n, n, dtype=torch.bool, device=norms.device), diagonal=1)
    diag = torch.eye(n, dtype=torch.bool, device=norms.device)
    layers = []
    for layer in range(norms.shape[0]):
        a = active[layer]
        layers.append(
            {
                "layer": layer if enc.per_layer else "all",
                "off_diagonal_active": float(a[..., off].float().mean()) if n > 1 else None,
                "diagonal_active": float(a[..., diag].float().mean()),
                "mean_group_norm": float(norms[layer][..., off | diag].mean()),
            }
        )
    return {
        "tile": tile,
        "threshold": threshold,
        "block_size": enc.block_size,
        "groups_per_generator": int(off.sum() + n),
        "off_diagonal_active": float(active[..., off].float().mean()) if n > 1 else None,
        "diagonal_active": float(active[..., diag].float().mean()),
        "layers": layers,
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The per-layer sparsity report as a markdown table."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    lines = [
        f"Coupling groups of {report['tile']} x {report['tile']} tiles in {report['block_size']}-wide "
        f"generator blocks; active = norm >= {report['threshold']} x the generator's largest.",
        "",
        "| layer | off-diagonal active (%) | diagonal active (%) | mean group norm |",
        "|---|---|---|---|",
    ]
    for r in report["layers"]:
        lines.append(
            f"| {r['layer']} | {pct(r['off_diagonal_active'])} | {pct(r['diagonal_active'])} | "
            f"{r['mean_group_norm']:.3f} |"
        )
    lines.append(f"| all | {pct(report['off_diagonal_active'])} | {pct(report['diagonal_active'])} | |")
    return "\n".join(lines) + "\n"
