"""LieRE: learned rotations R(p) = exp(sum_a p_a A_a) with skew-symmetric generators A_a.

Ostmeier et al., "LieRE: Lie Rotational Positional Encodings", ICML 2025 (arXiv 2406.10322).
Each generator is block-diagonal with d/g blocks of size g, parameterized by the strict upper
triangle U of every block (A = U - U^T), and owned per layer and per head (or shared). g = 2 is
RoPE-Mixed (closed form, applied as angles); g = d is dense.

``share_layers="official"`` reproduces what StanfordMIMI/LieRE trains: per-layer generators are
stored, but its layer loop (``models/vit.py``, ``Transformer.forward``) replaces the rotations by
layer 0's at the first layer, so every layer uses layer 0's and layers 1..L-1 get zero gradient.
``rope_mixed_paper`` is the paper's RoPE-Mixed baseline: this class with g = 2, entries U[0, 2 pi)
and the official positions (``lightning_liere_image_classification.py``, ``generator_dim=2``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liere.encodings.base import AngleRotation, BlockRotation, RotaryEncoding, RotationState
from liere.encodings.expm import skew_expm
from liere.encodings.registry import register_encoding

INITS = ("paper", "grid", "small")
# ``init: grid`` turns by as much per patch step on any training grid as ``init: paper`` does on
# ImageNet's 14 x 14 grid (224 px, patch 16) under the proportional scheme: one step is 1/13 there
GRID_REFERENCE_STEP = 1.0 / 13
SHARING = (None, "official")
PAPER_ROPE_MIXED = {"block_size": 2, "init": "paper", "positions": "official"}


@register_encoding(
    "liere",
    aliases={
        "liere8": {"block_size": 8},
        "liere64": {"block_size": 64},
        "rope_mixed_paper": PAPER_ROPE_MIXED,
    },
)
class LieRE(RotaryEncoding):
    """Block-diagonal LieRE with block size ``block_size`` (None: dense, one block of head_dim)."""

    default_scheme = "proportional"

    def __init__(
        self,
        *,
        block_size: int | None = 8,
        per_layer: bool = True,
        per_head: bool = True,
        init: str = "paper",
        share_layers: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        g = self.head_dim if block_size is None else int(block_size)
        if g < 2 or self.head_dim % g:
            raise ValueError(
                f"liere: block_size {block_size} must be >= 2 and divide head_dim {self.head_dim} "
                f"(for a dense generator pass block_size=None, i.e. g = head_dim)"
            )
        if init not in INITS:
            raise ValueError(f"liere: unknown init {init!r}; expected one of {INITS}")
        if share_layers not in SHARING:
            raise ValueError(f"liere: unknown share_layers {share_layers!r}; expected one of {SHARING}")
        self.share_layers = share_layers
        self.block_size, self.num_blocks = g, self.head_dim // g
        self.per_layer, self.per_head, self.init = per_layer, per_head, init
        L = self.depth if per_layer else 1
        H = self.num_heads if per_head else 1
        rows, cols = torch.triu_indices(g, g, offset=1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        # (num_axes, L, H, d/g, g(g-1)/2): the strict upper triangle of every block
        self.upper = nn.Parameter(torch.empty(self.num_axes, L, H, self.num_blocks, rows.numel()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "paper":  # the paper's U[0, 2 pi): large norms, many windings per grid
                self.upper.uniform_(0.0, 2 * math.pi)
            elif self.init == "grid":  # the paper's draw, scaled per axis to the ImageNet step
                self.upper.uniform_(0.0, 2 * math.pi)
                self.upper.mul_(self._grid_scale().view(-1, 1, 1, 1, 1))
            else:  # N(0, 1/g): spectral norm about 2 whatever the block size
                self.upper.normal_(0.0, 1.0 / math.sqrt(self.block_size))

    def _grid_scale(self) -> Tensor:
        """Per axis: the reference step (1/13) over one patch step of the training grid."""
        from liere.encodings.angles import axis_steps

        grid = self.position_reference
        if grid is None:
            raise ValueError("liere: init 'grid' scales the generators to the training grid; pass grid_shape")
        steps = axis_steps(self.position_scheme, grid, grid)
        return torch.tensor([GRID_REFERENCE_STEP / s for s in steps], dtype=self.upper.dtype)

    def skew(self, upper: Tensor) -> Tensor:
        """Strict upper triangles (..., g(g-1)/2) -> skew-symmetric blocks (..., g, g)."""
        g = self.block_size
        full = upper.new_zeros(*upper.shape[:-1], g, g)
        full[..., self._rows, self._cols] = upper
        return full - full.transpose(-1, -2)

    def used_upper(self) -> Tensor:
        """The triangles the rotations use: all layers', or layer 0's alone (``share_layers="official"``)."""
        return self.upper[:, :1] if self.share_layers == "official" else self.upper

    def generator_matrices(self) -> Tensor:
        """(num_axes, L, H, d/g, g, g), skew-symmetric; L = depth or 1 (1 when shared), H = heads or 1."""
        return self.skew(self.used_upper())

    def rotation(self, pos: Tensor) -> Tensor:
        """pos (N, num_axes) -> exp(sum_a p_a A_a): (L, H, N, d/g, g, g), orthogonal."""
        return self._exponentials(pos, "lhnkm")

    def _exponentials(self, pos: Tensor, layout: str) -> Tensor:
        # sum over axes on the upper triangles (half the work of full matrices), then one skew
        mixed = torch.einsum(f"na,alhkm->{layout}", pos, self.used_upper().float())
        return skew_expm(self.skew(mixed))

    def _state(self, pos: Tensor) -> RotationState:
        if self.block_size == 2:  # exp([[0, u], [-u, 0]]) rotates by -u: RoPE's angle form
            theta = -torch.einsum("na,alhk->lnhk", pos, self.used_upper()[..., 0].float())
            return AngleRotation(theta.cos(), theta.sin())
        return BlockRotation(self._exponentials(pos, "lnhkm"))  # token-major (L, T, H, ...) directly

    def _vector_flops(self) -> int:
        """d/g products of a g x g block with a g-vector: 2 d g (angle form when g = 2)."""
        return super()._vector_flops() if self.block_size == 2 else 2 * self.head_dim * self.block_size

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, block_size={self.block_size}, per_layer={self.per_layer}, "
            f"per_head={self.per_head}, init={self.init!r}, positions={self.position_scheme!r}, "
            f"share_layers={self.share_layers!r}"
        )
