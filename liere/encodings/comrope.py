"""ComRoPE: rotations from trainable commuting angle matrices, exactly relative.

Yu et al., "ComRoPE: Scalable and Robust Rotary Position Embedding Parameterized by Trainable
Commuting Angle Matrices", CVPR 2025 (arXiv 2506.03737; code Longin-Yu/ComRoPE ``model.py``).
Generators are block-diagonal with g x g skew blocks, R(p) = exp(sum_a p_a A_a), and the A_a
commute block by block, so R(p)^T R(p') = R(p' - p):

- ``comrope_ap`` (axis-partitioned): block j belongs to axis j mod n alone, B_j = P_j - P_j^T;
  axis a's generator is zero on the other axes' blocks (the source's ``mask[i, i::num_axes]``).
- ``comrope_ld`` (linearly dependent): one skew block S_j = P_j - P_j^T per head and block, and
  axis a's generator is theta_{a, j} S_j with a learned multiplier theta (shared by the heads, as
  in the source's ``multiplier`` of shape (1, num_axes, num_blocks, 1, 1)).

Parameters are stored as strict upper triangles U (S = U - U^T), as LieRE does; the source stores
full g x g matrices P, whose skew part P - P^T has entries N(0, 2 std^2) for P ~ N(0, std^2): the
default ``init_std=1`` (the source's ``CustomVITConfig.init_std``) is therefore drawn here as
U ~ N(0, 2 std^2), the same distribution of generators. Each layer owns its own (the source builds
one attention module per layer), per head as in the source.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liere.encodings.base import BlockRotation, RotaryEncoding, RotationState
from liere.encodings.expm import skew_expm
from liere.encodings.registry import register_encoding


class ComRoPE(RotaryEncoding):
    """Shared machinery: g x g blocks, their exponentials, the block layout of the contract."""

    default_scheme = "cells"  # the source's (i + 0.5) / n per axis (``axis_scale``)

    def __init__(
        self,
        *,
        block_size: int = 8,
        init_std: float = 1.0,
        per_layer: bool = True,
        per_head: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        g = int(block_size)
        if g < 2 or self.head_dim % g:
            raise ValueError(
                f"{self.name}: block_size {block_size} must be >= 2 and divide head_dim {self.head_dim}"
            )
        self.block_size, self.num_blocks, self.init_std = g, self.head_dim // g, float(init_std)
        self.per_layer, self.per_head = per_layer, per_head
        self.L = self.depth if per_layer else 1
        self.H = self.num_heads if per_head else 1
        rows, cols = torch.triu_indices(g, g, offset=1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    name = "comrope"

    def skew(self, upper: Tensor) -> Tensor:
        """(..., g(g-1)/2) -> (..., g, g) skew-symmetric."""
        g = self.block_size
        full = upper.new_zeros(*upper.shape[:-1], g, g)
        full[..., self._rows, self._cols] = upper
        return full - full.transpose(-1, -2)

    def axis_upper(self) -> Tensor:
        """Every axis's generator as upper triangles: (A, L, H, d/g, g(g-1)/2)."""
        raise NotImplementedError

    def generator_matrices(self) -> Tensor:
        """(num_axes, L, H, d/g, g, g), skew-symmetric and pairwise commuting."""
        return self.skew(self.axis_upper())

    def rotation(self, pos: Tensor) -> Tensor:
        """pos (N, num_axes) -> (L, H, N, d/g, g, g), orthogonal."""
        return self._exponentials(pos, "lhnkm")

    def _exponentials(self, pos: Tensor, layout: str) -> Tensor:
        mixed = torch.einsum(f"na,alhkm->{layout}", pos, self.axis_upper().float())
        return skew_expm(self.skew(mixed))

    def _state(self, pos: Tensor) -> RotationState:
        return BlockRotation(self._exponentials(pos, "lnhkm"))

    def _vector_flops(self) -> int:
        return 2 * self.head_dim * self.block_size  # d/g products of a g x g block with a g-vector

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, block_size={self.block_size}, init_std={self.init_std}, "
            f"per_layer={self.per_layer}, per_head={self.per_head}, positions={self.position_scheme!r}"
        )


@register_encoding("comrope_ap")
class ComRoPEAP(ComRoPE):
    """Axis-partitioned ComRoPE: block j rotates with axis j mod n only."""

    name = "comrope_ap"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.num_blocks < self.num_axes:
            raise ValueError(
                f"comrope_ap: {self.num_blocks} blocks of {self.block_size} cannot give each of "
                f"{self.num_axes} axes one; use a smaller block_size"
            )
        owner = torch.arange(self.num_blocks) % self.num_axes  # the source's mask[i, i::num_axes]
        mask = (owner.unsqueeze(0) == torch.arange(self.num_axes).unsqueeze(1)).float()
        self.register_buffer("axis_mask", mask[:, None, None, :, None], persistent=False)  # (A, 1, 1, K, 1)
        std = math.sqrt(2) * self.init_std  # P - P^T of P ~ N(0, std^2)
        self.upper = nn.Parameter(torch.randn(self.L, self.H, self.num_blocks, self._rows.numel()) * std)

    def axis_upper(self) -> Tensor:
        return self.upper.unsqueeze(0) * self.axis_mask


@register_encoding("comrope_ld")
class ComRoPELD(ComRoPE):
    """Linearly dependent ComRoPE: axis a's block j is theta[a, j] S_j."""

    name = "comrope_ld"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        std = math.sqrt(2) * self.init_std
        self.upper = nn.Parameter(torch.randn(self.L, self.H, self.num_blocks, self._rows.numel()) * std)
        # one multiplier per axis and block, shared by the heads (source: N(0, 1))
        self.multiplier = nn.Parameter(torch.randn(self.num_axes, self.L, 1, self.num_blocks))

    def axis_upper(self) -> Tensor:
        return self.upper.unsqueeze(0) * self.multiplier.unsqueeze(-1)
