"""RoPE in n dimensions: fixed axial frequencies and learnable mixed frequencies.

Both rotate pair k of a head vector by the angle ``theta_k(p) = sum_a p_a * f[a, k]``; they differ
only in the frequency table ``f`` (num_axes, L, H, d/2).
- ``rope_axial``: each axis owns a contiguous share of the pairs with the fixed spectrum
  f = theta^(-j/n_a), j < n_a (Heo et al. 2024, "Rotary Position Embedding for Vision
  Transformer", RoPE-Axial, theta = 100); positions are integer patch indices.
- ``rope_mixed``: every pair mixes all axes along a learnable direction; initialised with random
  orthonormal directions per layer and head and the magnitudes theta^(-j/m) (RoPE-Mixed, theta = 10).
- ``rope_mixed_ape``: RoPE-Mixed plus a learned absolute embedding added to the patch tokens, the
  second variant RoPE-ViT reports (naver-ai/rope-vit, ``rope_mixed_ape_deit_*`` models).
- ``rope_axial_vjepa2``: axial RoPE with theta = 10000, which in 3D is V-JEPA 2's encoding (head
  dim split in thirds over t/h/w, interleaved pairs, integer positions; see docs/encodings.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liere.encodings.absolute import LearnedAPE
from liere.encodings.base import AngleRotation, RotaryEncoding
from liere.encodings.registry import register_encoding


def angles(pos: Tensor, freqs: Tensor, token_major: bool = False) -> Tensor:
    """pos (N, A), freqs (A, L, H, K) -> angles (L, H, N, K), or (L, N, H, K) when ``token_major``."""
    return torch.einsum("na,alhk->lnhk" if token_major else "na,alhk->lhnk", pos, freqs)


def angle_blocks(theta: Tensor) -> Tensor:
    """Angles (L, H, N, K) -> 2 x 2 rotation blocks [[cos, -sin], [sin, cos]]: (L, H, N, K, 2, 2)."""
    c, s = theta.cos(), theta.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


class FrequencyRotary(RotaryEncoding):
    """A rotary encoding given by a frequency table (A, L, H, d/2): the RoPE family's common core."""

    default_scheme = "index"

    def frequencies(self) -> Tensor:
        raise NotImplementedError

    def generator_matrices(self) -> Tensor:
        """(num_axes, L, H, d/2, 2, 2): axis a's generator is f[a, k] * [[0, -1], [1, 0]] on pair k."""
        f = self.frequencies()
        zero = torch.zeros_like(f)
        return torch.stack([torch.stack([zero, -f], -1), torch.stack([f, zero], -1)], -2)

    def rotation(self, pos: Tensor) -> Tensor:
        return angle_blocks(angles(pos, self.frequencies().float()))

    def _state(self, pos: Tensor) -> AngleRotation:
        theta = angles(pos, self.frequencies().float(), token_major=True)
        return AngleRotation(theta.cos(), theta.sin())


def _check_even(head_dim: int, name: str) -> int:
    if head_dim % 2:
        raise ValueError(f"{name} rotates pairs of channels: head_dim must be even, got {head_dim}")
    return head_dim // 2


@register_encoding("rope_axial", aliases={"rope_axial_vjepa2": {"theta": 10000.0}})
class RoPEAxial(FrequencyRotary):
    """Fixed axial RoPE: pairs split across axes, each with the spectrum theta^(-j/n_a)."""

    def __init__(self, *, theta: float = 100.0, **kwargs) -> None:
        super().__init__(**kwargs)
        K = _check_even(self.head_dim, "rope_axial")
        per_axis = K // self.num_axes
        if per_axis == 0:
            raise ValueError(
                f"rope_axial: head_dim {self.head_dim} has fewer pairs than {self.num_axes} axes"
            )
        freqs = torch.zeros(self.num_axes, 1, 1, K)
        spectrum = theta ** (-torch.arange(per_axis, dtype=torch.float64) / per_axis)
        for a in range(self.num_axes):  # pairs beyond num_axes * per_axis stay unrotated
            freqs[a, 0, 0, a * per_axis : (a + 1) * per_axis] = spectrum.float()
        self.register_buffer("freqs", freqs, persistent=False)
        self.theta = theta

    def frequencies(self) -> Tensor:
        return self.freqs


def mixed_frequencies(
    num_axes: int, L: int, H: int, K: int, theta: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """RoPE-Mixed initialisation in n dims: pair k points along axis k mod n of a random orthonormal
    frame (one per layer and head), with magnitude theta^(-j/m), j = k div n, m = ceil(K / n)."""
    m = math.ceil(K / num_axes)
    k = torch.arange(K)
    magnitude = theta ** (-(k // num_axes).double() / m)  # (K,)
    gauss = torch.randn(L, H, num_axes, num_axes, generator=generator, dtype=torch.float64)
    frame, r = torch.linalg.qr(gauss)  # columns orthonormal, Haar-random after the sign fix
    frame = frame * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    directions = frame[..., k % num_axes]  # (L, H, A, K): column k mod n
    return (directions * magnitude).permute(2, 0, 1, 3).float().contiguous()  # (A, L, H, K)


@register_encoding("rope_mixed")
class RoPEMixed(FrequencyRotary):
    """Learnable mixed-axis frequencies per layer and head (or shared)."""

    def __init__(
        self, *, theta: float = 10.0, per_layer: bool = True, per_head: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        K = _check_even(self.head_dim, "rope_mixed")
        L = self.depth if per_layer else 1
        H = self.num_heads if per_head else 1
        self.freqs = nn.Parameter(mixed_frequencies(self.num_axes, L, H, K, theta))
        self.theta, self.per_layer, self.per_head = theta, per_layer, per_head

    def frequencies(self) -> Tensor:
        return self.freqs


@register_encoding("rope_mixed_ape")
class RoPEMixedAPE(RoPEMixed):
    """RoPE-Mixed with a learned absolute embedding added to the patch tokens (RoPE-ViT's "+ APE")."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        geometry = dict(head_dim=self.head_dim, num_heads=self.num_heads, depth=self.depth)
        self.ape = LearnedAPE(**geometry, num_axes=self.num_axes, grid_shape=self.grid_shape)

    def embed(self, tokens: Tensor, grid_shape) -> Tensor:
        return self.ape.embed(tokens, grid_shape)

    def apply_flops(self, num_tokens: int) -> int:
        """The rotations, plus one addition per channel of every token (class token included here)."""
        return super().apply_flops(num_tokens) + self.ape.apply_flops(num_tokens)
