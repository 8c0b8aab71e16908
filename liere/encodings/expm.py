"""Matrix exponentials of many small skew-symmetric matrices, fast in both directions.

``torch.linalg.matrix_exp`` picks one scaling for a whole batch and differentiates through the
exponential of a 2n x 2n block matrix, whose cost is several times the forward pass. LieRE needs
one exponential per layer, head, token and block: about 10^5 matrices of 8 x 8 for a ViT-S, with
1-norms up to ~60 under the paper's initialisation (450 for dense 64 x 64 blocks). Here:

- scaling and squaring sized per matrix: matrices are grouped by their number of squarings s, each
  group scaled by 2^-s so its 1-norm is at most THETA;
- a degree-16 Taylor polynomial of exp(Z) - I, evaluated with Paterson-Stockmeyer (6 products,
  three of them fused with the additions);
- squarings in the "minus identity" form E <- 2E + E^2, which keeps rounding errors relative to
  the small E while it is small (Higham, "Functions of Matrices", 2008, sec. 10.3);
- a backward that autograd derives from the polynomial and the squarings themselves (about two
  products per product of the forward), not the generic 2n x 2n method.

Truncation: for ||Z||_1 <= THETA the Taylor remainder is below THETA^17 / 17! ~ 1e-8 relative.

Host syncs: grouping needs the group sizes on the host (``.tolist()``), which on a GPU waits for the
device every forward and breaks ``torch.compile`` graphs. On accelerators and under compilation the
exponential instead takes one path without host reads: every matrix scaled by its own 2^-s (exact),
one Taylor evaluation, then MAX_SQUARINGS masked squarings (matrix i keeps its value from step s_i
on), bit for bit the grouped result; a 1-norm past THETA * 2^MAX_SQUARINGS (~9.8e3) is NaN there,
never a silently wrong rotation. On the CPU, eager, host reads cost nothing and grouping is faster.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEGREE = 16  # Taylor degree of exp(Z) - I
POWERS = 4  # Paterson-Stockmeyer block: Z, Z^2, Z^3, Z^4
THETA = 2.4  # ||Z||_1 bound: THETA^17 / 17! < 1e-8
# squarings of the path without host reads: 1-norms up to THETA * 2^12 ~ 9.8e3 (the paper's dense 64 x 64
# initialisation reaches ~450 on the training grid, ~1.8e3 on a grid four times as large)
MAX_SQUARINGS = 12
_COEFFS = [1.0 / math.factorial(k) for k in range(DEGREE + 1)]


def _expm1_taylor(Z: Tensor) -> Tensor:
    """exp(Z) - I for ||Z||_1 <= THETA: the Taylor polynomial by Paterson-Stockmeyer.

    With B_j = sum_{i<4} c[4j+i] Z^i, the polynomial is B_0 + Z^4 (B_1 + Z^4 (B_2 + Z^4 (B_3 + c[16] Z^4))):
    3 products for Z^2, Z^3, Z^4 and 3 fused multiply-adds (baddbmm) for the Horner steps.
    """
    c = _COEFFS
    Z2 = Z @ Z
    Z3 = Z2 @ Z
    Z4 = Z2 @ Z2
    diag = torch.eye(Z.shape[-1], dtype=Z.dtype, device=Z.device)

    def chunk(j: int) -> Tensor:
        k = POWERS * j
        out = torch.add(Z * c[k + 1], Z2, alpha=c[k + 2]).add_(Z3, alpha=c[k + 3])
        return out if j == 0 else out.add_(diag, alpha=c[k])

    acc = torch.add(chunk(3), Z4, alpha=c[DEGREE])
    for j in (2, 1, 0):
        acc = torch.baddbmm(chunk(j), Z4, acc)
    return acc


def squarings(X: Tensor) -> Tensor:
    """Number of squarings per matrix so that ||X / 2^s||_1 <= THETA: int64 (...,)."""
    norm = X.detach().abs().sum(-2).amax(-1)
    return torch.ceil(torch.log2(norm.clamp_min(1e-30) / THETA)).clamp_min(0).to(torch.int64)


def _expm1_scaled(X: Tensor, s: int) -> Tensor:
    E = _expm1_taylor(X * (2.0**-s))
    for _ in range(s):
        E = torch.baddbmm(E, E, E, beta=2.0)  # (I + E)^2 - I
    return E


def skew_expm(X: Tensor, *, host_reads: bool | None = None) -> Tensor:
    """exp(X) for a batch (..., g, g) of (skew-symmetric) matrices; differentiable.

    ``host_reads``: group by squarings with the group sizes read on the host (default on the CPU,
    eager), or False: the masked path without host reads (default on accelerators and under
    ``torch.compile``); both give the same bits up to MAX_SQUARINGS squarings.
    """
    if host_reads is None:
        host_reads = X.device.type == "cpu" and not torch.compiler.is_compiling()
    shape, g = X.shape, X.shape[-1]
    flat = X.reshape(-1, g, g)
    eye = torch.eye(g, dtype=X.dtype, device=X.device)
    out = _grouped(flat) if host_reads else _masked(flat)
    return (out + eye).reshape(shape)


def _grouped(flat: Tensor) -> Tensor:
    """exp - I with matrices that need the same number of squarings computed together, so a few large
    generators do not make every small one pay their squarings (reads the levels on the host)."""
    s = squarings(flat)
    levels = torch.unique(s).tolist()
    if len(levels) == 1:
        return _expm1_scaled(flat, int(levels[0]))
    order = torch.argsort(s, stable=True)
    counts = torch.bincount(s, minlength=max(levels) + 1)
    pieces, start = [], 0
    sorted_flat = flat.index_select(0, order)
    for level in levels:
        n = int(counts[level])
        pieces.append(_expm1_scaled(sorted_flat[start : start + n], int(level)))
        start += n
    out = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    return torch.cat(pieces).index_select(0, out)


def _masked(flat: Tensor) -> Tensor:
    """exp - I without host reads: each matrix scaled by its own 2^-s, MAX_SQUARINGS squarings of which
    matrix i takes the first s_i; NaN where s_i exceeds MAX_SQUARINGS."""
    s = squarings(flat).view(-1, 1, 1)
    scale = torch.exp2(-s.clamp_max(MAX_SQUARINGS).to(flat.dtype))  # a power of two: exact
    E = _expm1_taylor(flat * scale)
    for k in range(MAX_SQUARINGS):
        E = torch.where(s > k, torch.baddbmm(E, E, E, beta=2.0), E)  # (I + E)^2 - I while k < s_i
    return E.masked_fill(s > MAX_SQUARINGS, float("nan"))
