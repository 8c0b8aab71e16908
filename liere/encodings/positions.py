"""Token positions of an N-d patch grid, in the schemes the encodings use."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SCHEMES = ("proportional", "rescale", "index", "official", "centered", "cells")
NEEDS_TRAIN_GRID = ("proportional", "official")


def grid_positions(
    grid_shape: Sequence[int],
    train_grid_shape: Sequence[int] | None = None,
    scheme: str = "proportional",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Positions of every cell of ``grid_shape`` in row-major order: ``(N, num_axes)``.

    - ``proportional`` (LieRE's "sequential" scheme): index / (train_size - 1) per axis, so the
      training grid spans [0, 1] and a larger grid extends past 1 at the same spacing;
    - ``rescale``: index / (size - 1), so any grid spans [0, 1];
    - ``index``: the integer patch index (RoPE's convention);
    - ``official``: ``linspace(0, size / train_size, size)`` per axis, as StanfordMIMI/LieRE computes
      (``models/rope_vit.py``, ``PositionEncoderBase``): equal to ``proportional`` on the training
      grid, a slightly different spacing ``(size / train) / (size - 1)`` on others;
    - ``centered``: cell centres mapped to [-1, 1], ``(2 i + 1) / size - 1`` (DINOv3's "separate"
      normalisation, ``dinov3/layers/rope_position_encoding.py``);
    - ``cells``: cell centres in [0, 1], ``(i + 0.5) / size`` (ComRoPE's ``axis_scale``).
    An axis of size 1 sits at 0 (``centered``: 0; ``cells``: 0.5).
    """
    grid_shape = tuple(int(s) for s in grid_shape)
    if not grid_shape or any(s < 1 for s in grid_shape):
        raise ValueError(f"grid_shape must be a non-empty tuple of positive sizes, got {grid_shape}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown position scheme {scheme!r}; expected one of {SCHEMES}")
    if scheme in NEEDS_TRAIN_GRID:
        if train_grid_shape is None:
            raise ValueError(f"the {scheme} scheme needs train_grid_shape (the training grid)")
        train_grid_shape = tuple(int(s) for s in train_grid_shape)
        if len(train_grid_shape) != len(grid_shape):
            raise ValueError(
                f"grid {grid_shape} has {len(grid_shape)} axes but the training grid "
                f"{train_grid_shape} has {len(train_grid_shape)}"
            )
    axes = [_axis(scheme, size, None if train_grid_shape is None else train_grid_shape[a], device)
            for a, size in enumerate(grid_shape)]  # fmt: skip
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1).to(dtype)


def _axis(scheme: str, size: int, train: int | None, device) -> torch.Tensor:
    """The float64 coordinates of one axis of ``size`` cells under ``scheme``."""
    i = torch.arange(size, device=device, dtype=torch.float64)
    if scheme == "proportional":
        return i / max(train - 1, 1)
    if scheme == "rescale":
        return i / max(size - 1, 1)
    if scheme == "official":  # linspace(0, size / train, size)
        return i * (size / train) / max(size - 1, 1)
    if scheme == "centered":
        return (2 * i + 1) / size - 1
    if scheme == "cells":
        return (i + 0.5) / size
    return i  # index
