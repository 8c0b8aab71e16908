"""The interface every position encoding implements, and the rotation states rotary ones build.

Two kinds share one interface so the ViT never asks which it holds:
- additive encodings (APE) change the patch tokens once, in ``embed``;
- rotary encodings (LieRE, RoPE, STRING) build a rotation state once per forward pass, in
  ``prepare``, and every attention layer applies its slice of it to q and k.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from liere.encodings.augment import PositionAugment, parse_augment
from liere.encodings.positions import SCHEMES, grid_positions
from liere.encodings.registry import register_encoding


def _per_layer(t: Tensor | None) -> tuple[Tensor, ...] | None:
    """Split the leading layer axis once: backward then stacks all layers' gradients in one go,
    where indexing per layer would allocate and add a full-size gradient for every layer."""
    return None if t is None else t.unbind(0)


def _layer(views: tuple[Tensor, ...], layer: int) -> Tensor:
    """Rotations are stored per layer (L views) or shared by all layers (one view)."""
    return views[layer if len(views) > 1 else 0]


@dataclass
class AngleRotation:
    """Rotations made of 2 x 2 blocks, stored as angles: ``cos`` and ``sin`` of shape (L, T, H, d/2).

    Pair k of a head vector, ``(x[2k], x[2k+1])``, is rotated by ``[[cos, -sin], [sin, cos]]``.
    ``basis`` (L, H, d, d), when given, is an orthogonal change of basis applied first
    (``x -> P^T x``; STRING). Costs O(T d) per head and layer: no matrix is ever built.
    States are token-major, (T, H), like the (B, T, H, d) q and k they rotate: that is the memory
    layout the CPU flash-attention kernel reads without a copy.
    """

    cos: Tensor
    sin: Tensor
    basis: Tensor | None = None

    def __post_init__(self) -> None:
        self._cos, self._sin, self._basis = _per_layer(self.cos), _per_layer(self.sin), _per_layer(self.basis)
        # fp32/fp64: one complex multiply per pair, (x0 + i x1)(cos + i sin), in a single pass
        complex_ok = self.cos.dtype in (torch.float32, torch.float64)
        self._phase = _per_layer(torch.complex(self.cos, self.sin)) if complex_ok else None

    def apply(self, x: Tensor, layer: int) -> Tensor:
        """x: (..., T, H, d) -> same shape, rotated with layer ``layer``'s rotations."""
        if self._basis is not None:  # row vectors: x P == (P^T x)^T, one product per head
            x = torch.einsum("...thd,hde->...the", x, _layer(self._basis, layer))
        pairs = x.unflatten(-1, (-1, 2))  # (..., H, T, K, 2)
        if self._phase is not None and x.dtype == self.cos.dtype:
            if pairs.stride(-1) != 1 or any(st % 2 for st in pairs.stride()[:-1]):
                pairs = pairs.contiguous()
            return torch.view_as_real(torch.view_as_complex(pairs) * _layer(self._phase, layer)).flatten(-2)
        cos, sin = _layer(self._cos, layer), _layer(self._sin, layer)  # (T, H, K); bf16/fp16: no complex
        x0, x1 = pairs.unbind(-1)
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)

    def with_prefix(self, num_prefix: int) -> AngleRotation:
        """Prepend ``num_prefix`` identity rotations (class token and other special tokens)."""
        if num_prefix == 0:
            return self
        L, _, H, K = self.cos.shape
        ones = self.cos.new_ones(L, num_prefix, H, K)
        return AngleRotation(
            torch.cat([ones, self.cos], dim=1),
            torch.cat([torch.zeros_like(ones), self.sin], dim=1),
            self.basis,
        )

    def to(self, dtype: torch.dtype) -> AngleRotation:
        basis = None if self.basis is None else self.basis.to(dtype)
        return AngleRotation(self.cos.to(dtype), self.sin.to(dtype), basis)


@dataclass
class BlockRotation:
    """Block-diagonal rotations ``blocks`` (L, T, H, d/g, g, g), applied block by block.

    The product is a batched (g x g) @ (g x B) per head, token and block: the batch is folded into
    the columns, so no per-sample copy of a rotation and no dense d x d matrix is ever built.
    """

    blocks: Tensor

    def __post_init__(self) -> None:
        self._blocks = _per_layer(self.blocks)

    def apply(self, x: Tensor, layer: int) -> Tensor:
        """x: (..., T, H, d) -> same shape."""
        blocks = _layer(self._blocks, layer)  # (T, H or 1, K, g, g)
        T, _, K, g, _ = blocks.shape
        H, lead = x.shape[-2], x.shape[:-3]
        n = len(lead)
        # (..., T, H, K, g) -> (T, H, K, g, ...): one (g x g) @ (g x batch) product per token, head, block
        cols = x.unflatten(-1, (K, g)).movedim(tuple(range(n)), tuple(range(-n, 0))).reshape(T, H, K, g, -1)
        out = (blocks @ cols).reshape(T, H, K, g, *lead)
        return out.movedim(tuple(range(4, 4 + n)), tuple(range(n))).flatten(-2)

    def with_prefix(self, num_prefix: int) -> BlockRotation:
        if num_prefix == 0:
            return self
        L, _, H, K, g, _ = self.blocks.shape
        eye = torch.eye(g, dtype=self.blocks.dtype, device=self.blocks.device)
        eye = eye.expand(L, num_prefix, H, K, g, g)
        return BlockRotation(torch.cat([eye, self.blocks], dim=1))

    def to(self, dtype: torch.dtype) -> BlockRotation:
        return BlockRotation(self.blocks.to(dtype))


RotationState = AngleRotation | BlockRotation


@register_encoding("none")
class PositionEncoding(nn.Module):
    """Base class: geometry of the model (heads, depth, axes) and the training grid.

    The default is the identity (``none``): no embedding and no rotation.
    """

    is_rotary = False

    def __init__(
        self,
        *,
        head_dim: int,
        num_heads: int,
        depth: int,
        num_axes: int,
        grid_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if num_axes < 1:
            raise ValueError(f"num_axes must be >= 1, got {num_axes}")
        if grid_shape is not None and len(grid_shape) != num_axes:
            raise ValueError(f"grid_shape {tuple(grid_shape)} does not have num_axes={num_axes} axes")
        self.head_dim, self.num_heads, self.depth, self.num_axes = head_dim, num_heads, depth, num_axes
        self.grid_shape = None if grid_shape is None else tuple(int(s) for s in grid_shape)

    def embed(self, tokens: Tensor, grid_shape: Sequence[int]) -> Tensor:
        """Patch tokens (B, N, D) of a grid -> tokens with the position added (additive kinds)."""
        return tokens

    def prepare(self, grid_shape: Sequence[int], num_prefix: int = 0) -> RotationState | None:
        """The rotations of one forward pass for every layer and head (rotary kinds), else None."""
        return None

    def apply_flops(self, num_tokens: int) -> int:
        """FLOPs per sample of applying the encoding to ``num_tokens`` tokens (all layers)."""
        return 0

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_heads={self.num_heads}, depth={self.depth}, num_axes={self.num_axes}"


class RotaryEncoding(PositionEncoding):
    """Rotary encodings: q and k of every layer and head rotated by R(p), values untouched.

    Subclasses give ``rotation(pos)`` (the public block layout, (L, H, N, d/g, g, g)) and
    ``_state(pos)`` (the cheapest form to apply). ``prepare`` computes the state once per forward
    pass, in fp32 with autocast off, casts it to the compute dtype, and caches it per grid in eval
    mode (keyed by the parameters' versions, so an in-place update is never served stale).
    """

    is_rotary = True
    default_scheme = "proportional"

    def __init__(
        self,
        *,
        positions: str | None = None,
        augment=None,
        reference_grid: Sequence[int] | None = None,
        **geometry,
    ) -> None:
        super().__init__(**geometry)
        # the grid whose spacing positions keep (default: the training grid); fine-tuning at a new
        # size passes the pretraining grid, so a patch step turns as far as it did in pretraining
        self.reference_grid = None if reference_grid is None else tuple(int(s) for s in reference_grid)
        if self.reference_grid is not None and len(self.reference_grid) != self.num_axes:
            raise ValueError(
                f"reference_grid {self.reference_grid} does not have num_axes={self.num_axes} axes"
            )
        self.position_scheme = positions or self.default_scheme
        amounts = parse_augment(augment)
        # training-only coordinate augmentation (liere.encodings.augment); None when off
        self.augment = None if amounts is None else PositionAugment(amounts)
        self._cache: dict[tuple, RotationState] = {}

    # -- what subclasses provide -------------------------------------------------------------
    def rotation(self, pos: Tensor) -> Tensor:
        """pos (N, num_axes) -> rotations (L, H, N, d/g, g, g); L, H are 1 where shared."""
        raise NotImplementedError

    def _state(self, pos: Tensor) -> RotationState:
        """The rotations in the cheapest form to apply, token-major (L, T, H, ...)."""
        return BlockRotation(self.rotation(pos).transpose(1, 2))

    def apply_flops(self, num_tokens: int) -> int:
        """Rotating q and k in every layer: 2 * depth * heads * tokens * (cost per head vector)."""
        return 2 * self.depth * self.num_heads * num_tokens * self._vector_flops()

    def _vector_flops(self) -> int:
        """FLOPs to rotate one head vector: 3 per channel in the angle form (2 mul + 1 add)."""
        return 3 * self.head_dim

    # -- shared machinery --------------------------------------------------------------------
    @property
    def position_scheme(self) -> str:
        """How token indices become positions (liere.encodings.positions.SCHEMES)."""
        return self._position_scheme

    @position_scheme.setter
    def position_scheme(self, scheme: str) -> None:
        """Another scheme for the same weights (e.g. evaluation at a larger grid): cached rotations go."""
        if scheme not in SCHEMES:
            raise ValueError(f"unknown position scheme {scheme!r}; expected one of {SCHEMES}")
        self._position_scheme = scheme
        self._cache = {}

    def positions(self, grid_shape: Sequence[int], device: torch.device | None = None) -> Tensor:
        """Positions of a grid's tokens under this encoding's scheme: (N, num_axes)."""
        if len(grid_shape) != self.num_axes:
            raise ValueError(
                f"grid {tuple(grid_shape)} has {len(grid_shape)} axes; encoding has {self.num_axes}"
            )
        return grid_positions(grid_shape, self.position_reference, self.position_scheme, device=device)

    @property
    def position_reference(self) -> tuple[int, ...] | None:
        """The grid whose spacing the positions follow: ``reference_grid``, else the training grid."""
        return self.reference_grid or self.grid_shape

    def _reference(self) -> Tensor:
        """A parameter or buffer of the module: where and in which dtype the rotations live."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next(t for t in tensors if t.is_floating_point())

    def prepare(self, grid_shape: Sequence[int], num_prefix: int = 0) -> RotationState:
        ref = self._reference()
        device = ref.device
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        else:
            dtype = ref.dtype
        cacheable = not self.training and not torch.is_grad_enabled()
        key = (tuple(grid_shape), num_prefix, device, dtype, tuple(p._version for p in self.parameters()))
        if cacheable and key in self._cache:
            return self._cache[key]
        with torch.autocast(device_type=device.type, enabled=False):
            if self.training and self.augment is not None:  # never in eval: eval states are cached
                pos = self.augment(self.positions(grid_shape), tuple(grid_shape), device)  # drawn on the CPU
            else:
                pos = self.positions(grid_shape, device=device)
            state = self._state(pos).with_prefix(num_prefix).to(dtype)
        if cacheable:
            self._cache = {key: state} if len(self._cache) >= 8 else {**self._cache, key: state}
        return state

    def train(self, mode: bool = True):
        self._cache = {}
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(): drop rotations of the old kind
        self._cache = {}
        return super()._apply(fn, recurse)
