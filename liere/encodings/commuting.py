"""STRING: exactly relative rotations from commuting generators, R(p) = P RoPE(p) P^T.

Schenck et al., "Learning the RoPEs: Better 2D and 3D Position Encodings with STRING", ICML 2025
(arXiv 2502.02562). The generators P J_k P^T commute, so R(p)^T R(p') = R(p' - p) exactly, unlike
dense LieRE. P is a learned orthogonal matrix (Cayley transform of a learned skew matrix S,
P = (I - S)(I + S)^-1, identity at init) and the RoPE part has RoPE-Mixed's learnable
frequencies. ComRoPE (Yu et al., CVPR 2025) is the same family of commuting generators.

Since q'^T k' = (P^T q)^T RoPE(p' - p) (P^T k), applying ``x -> RoPE(p) P^T x`` gives the same
attention scores as the full rotation: P costs one d x d product per token (it can be folded
into the query and key projections) and the rotation stays in angle form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from liere.encodings.base import AngleRotation
from liere.encodings.registry import register_encoding
from liere.encodings.rope import FrequencyRotary, angle_blocks, angles, mixed_frequencies


@register_encoding("string")
class STRING(FrequencyRotary):
    """Cayley-STRING with learnable frequencies, per layer and head (or shared)."""

    def __init__(
        self, *, theta: float = 10.0, per_layer: bool = True, per_head: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        d = self.head_dim
        if d % 2:
            raise ValueError(f"string rotates pairs of channels: head_dim must be even, got {d}")
        L = self.depth if per_layer else 1
        H = self.num_heads if per_head else 1
        self.freqs = nn.Parameter(mixed_frequencies(self.num_axes, L, H, d // 2, theta))
        rows, cols = torch.triu_indices(d, d, offset=1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        self.cayley = nn.Parameter(torch.zeros(L, H, rows.numel()))  # upper triangle of S
        self.theta, self.per_layer, self.per_head = theta, per_layer, per_head

    def frequencies(self) -> Tensor:
        return self.freqs

    def basis(self) -> Tensor:
        """The orthogonal P (L, H, d, d) = (I + S)^-1 (I - S)."""
        d = self.head_dim
        s = self.cayley.float()
        skew = s.new_zeros(*s.shape[:-1], d, d)
        skew[..., self._rows, self._cols] = s
        skew = skew - skew.transpose(-1, -2)
        eye = torch.eye(d, dtype=s.dtype, device=s.device)
        return torch.linalg.solve(eye + skew, eye - skew)

    def _conjugate(self, blocks: Tensor) -> Tensor:
        """2 x 2 blocks (X, L, H, K, 2, 2) -> P blockdiag(blocks) P^T as one dense block (X, L, H, 1, d, d)."""
        X, L, H, K = blocks.shape[:4]
        dense = blocks.new_zeros(X, L, H, K, 2, K, 2)
        dense.diagonal(dim1=3, dim2=5).copy_(blocks.permute(0, 1, 2, 4, 5, 3))
        dense = dense.reshape(X, L, H, 2 * K, 2 * K)
        P = self.basis()  # (L, H, d, d)
        return (P @ dense @ P.transpose(-1, -2)).unsqueeze(3)

    def generator_matrices(self) -> Tensor:
        """(num_axes, L, H, 1, d, d): P (f[a, k] J on every pair k) P^T, pairwise commuting."""
        return self._conjugate(super().generator_matrices())

    def rotation(self, pos: Tensor) -> Tensor:
        """P RoPE(p) P^T as one dense block: (L, H, N, 1, d, d)."""
        blocks = angle_blocks(angles(pos, self.freqs.float()))  # (L, H, N, K, 2, 2)
        dense = self._conjugate(blocks.permute(2, 0, 1, 3, 4, 5))  # tokens lead: (N, L, H, 1, d, d)
        return dense.permute(1, 2, 0, 3, 4, 5)

    def _vector_flops(self) -> int:
        """The change of basis P^T x (2 d^2), then RoPE's angle form (3 d)."""
        return 2 * self.head_dim**2 + super()._vector_flops()

    def _state(self, pos: Tensor) -> AngleRotation:
        theta = angles(pos, self.freqs.float(), token_major=True)
        return AngleRotation(theta.cos(), theta.sin(), basis=self.basis())
