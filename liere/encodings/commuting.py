"""STRING: exactly relative rotations from commuting generators, R(p) = P RoPE(p) P^T.

Schenck et al., "Learning the RoPEs: Better 2D and 3D Position Encodings with STRING", ICML 2025
(arXiv 2502.02562). The generators P J_k P^T commute, so R(p)^T R(p') = R(p' - p) exactly, unlike
dense LieRE. P is a learned orthogonal matrix (Cayley transform of a learned skew matrix S,
P = (I - S)(I + S)^-1, identity at init) and the RoPE part has RoPE-Mixed's learnable
frequencies. ComRoPE (Yu et al., CVPR 2025) is the same family of commuting generators.

Since q'^T k' = (P^T q)^T RoPE(p' - p) (P^T k), applying ``x -> RoPE(p) P^T x`` gives the same
attention scores as the full rotation: P costs one d x d product per token (it can be folded
into the query and key projections) and the rotation stays in angle form.

``string_circulant`` is STRING's circulant variant: each generator is ``C_a - C_a^T`` with ``C_a``
a learned circulant matrix (first row ``c_a``). Circulant matrices commute, and all of them are
diagonalised by the Fourier basis, so R(p) = F RoPE(p) F^T with F the fixed real Fourier basis and
the angles the sine transform of ``c_a - reverse(c_a)``; R(p) is itself circulant and orthogonal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liere.encodings.base import AngleRotation
from liere.encodings.registry import register_encoding
from liere.encodings.rope import FrequencyRotary, angle_blocks, angles, mixed_frequencies


class ConjugatedRoPE(FrequencyRotary):
    """R(p) = P RoPE(p) P^T with an orthogonal ``basis()`` P (L, H, d, d): exactly relative."""

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
        blocks = angle_blocks(angles(pos, self.frequencies().float()))  # (L, H, N, K, 2, 2)
        dense = self._conjugate(blocks.permute(2, 0, 1, 3, 4, 5))  # tokens lead: (N, L, H, 1, d, d)
        return dense.permute(1, 2, 0, 3, 4, 5)

    def _vector_flops(self) -> int:
        """The change of basis P^T x (2 d^2), then RoPE's angle form (3 d)."""
        return 2 * self.head_dim**2 + super()._vector_flops()

    def _state(self, pos: Tensor) -> AngleRotation:
        theta = angles(pos, self.frequencies().float(), token_major=True)
        return AngleRotation(theta.cos(), theta.sin(), basis=self.basis())


@register_encoding("string")
class STRING(ConjugatedRoPE):
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
        """The orthogonal P (L, H, d, d) = (I + S)^-1 (I - S). I + S is invertible for every real skew S
        (eigenvalues 1 + i lambda): ``solve_ex`` skips ``solve``'s singularity check, a host sync on GPUs."""
        d = self.head_dim
        s = self.cayley.float()
        skew = s.new_zeros(*s.shape[:-1], d, d)
        skew[..., self._rows, self._cols] = s
        skew = skew - skew.transpose(-1, -2)
        eye = torch.eye(d, dtype=s.dtype, device=s.device)
        return torch.linalg.solve_ex(eye + skew, eye - skew, check_errors=False).result


def real_fourier_basis(d: int) -> Tensor:
    """Orthogonal (d, d) float64, d even: columns (sin_m, cos_m) for m = 1..d/2-1, then the
    constant and the alternating vector. Every real circulant skew matrix A acts on the pair
    (sin_m, cos_m) as w_m [[0, -1], [1, 0]] (a RoPE pair) and kills the last two columns."""
    j = torch.arange(d, dtype=torch.float64)
    cols = []
    for m in range(1, d // 2):
        cols += [torch.sin(2 * math.pi * m * j / d), torch.cos(2 * math.pi * m * j / d)]
    cols += [torch.ones(d, dtype=torch.float64), torch.cos(math.pi * j)]
    basis = torch.stack(cols, dim=1)
    return basis / basis.norm(dim=0, keepdim=True)


@register_encoding("string_circulant")
class CirculantSTRING(ConjugatedRoPE):
    """Circulant-STRING: generators C_a - C_a^T with learned circulant C_a, per layer and head (or shared).

    Initialised so that its angles are RoPE-Mixed's initial frequencies (d/2 - 1 pairs; the last
    pair, the constant and alternating channels, never turns): at init it is RoPE-Mixed in the
    Fourier basis, as Cayley-STRING at init is RoPE-Mixed in the identity basis.
    """

    def __init__(
        self, *, theta: float = 10.0, per_layer: bool = True, per_head: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        d = self.head_dim
        if d % 2 or d < 4:
            raise ValueError(f"string_circulant needs an even head_dim >= 4, got {d}")
        L = self.depth if per_layer else 1
        H = self.num_heads if per_head else 1
        K = d // 2
        m = torch.arange(1, K, dtype=torch.float64)
        # w_m = sum_k a_k sin(2 pi m k / d) with a = c - reverse(c) antisymmetric: w = 2 S a[1:K],
        # S the DST-I matrix sin(pi m k / K) (S^2 = K/2 I), so a[1:K] = S w / K
        self.register_buffer(
            "_sine", torch.sin(2 * math.pi * torch.outer(m, torch.arange(d)) / d), persistent=False
        )
        self.register_buffer("_fourier", real_fourier_basis(d).float(), persistent=False)
        w = mixed_frequencies(self.num_axes, L, H, K - 1, theta).double()  # (A, L, H, K-1)
        dst = torch.sin(math.pi * torch.outer(m, m) / K)
        a = torch.einsum("mk,alhm->alhk", dst, w) / K  # a_1..a_{K-1}
        c = torch.zeros(*w.shape[:3], d, dtype=torch.float64)
        c[..., 1:K] = a / 2
        c[..., K + 1 :] = -(a / 2).flip(-1)  # c_{d-k} = -c_k: C - C^T has first row a
        self.circ = nn.Parameter(c.float())  # (A, L, H, d): the first row of every C_a
        self.theta, self.per_layer, self.per_head = theta, per_layer, per_head

    def circulant_generators(self) -> Tensor:
        """C_a - C_a^T built directly from the first rows: (A, L, H, d, d), entry (i, j) = a[(j - i) mod d]."""
        d = self.head_dim
        a = self.circ - self.circ.flip(-1).roll(1, -1)  # a_k = c_k - c_{-k}
        idx = (torch.arange(d).unsqueeze(0) - torch.arange(d).unsqueeze(1)) % d
        return a[..., idx.to(a.device)]

    def frequencies(self) -> Tensor:
        """(A, L, H, d/2): pair m < d/2 - 1 of the Fourier basis turns at w_m = sum_k a_k sin(2 pi (m+1) k / d)."""
        a = self.circ - self.circ.flip(-1).roll(1, -1)  # a_k = c_k - c_{(d - k) mod d}
        w = torch.einsum("alhk,mk->alhm", a, self._sine.to(a.dtype))
        return torch.cat([w, torch.zeros_like(w[..., :1])], dim=-1)

    def basis(self) -> Tensor:
        L, H = self.circ.shape[1:3]
        return self._fourier.expand(L, H, -1, -1)
