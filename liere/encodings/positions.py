"""Token positions of an N-d patch grid, in the schemes the encodings use."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SCHEMES = ("proportional", "rescale", "index")


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
    - ``index``: the integer patch index (RoPE's convention).
    An axis of size 1 sits at 0.
    """
    grid_shape = tuple(int(s) for s in grid_shape)
    if not grid_shape or any(s < 1 for s in grid_shape):
        raise ValueError(f"grid_shape must be a non-empty tuple of positive sizes, got {grid_shape}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown position scheme {scheme!r}; expected one of {SCHEMES}")
    if scheme == "proportional":
        if train_grid_shape is None:
            raise ValueError("the proportional scheme needs train_grid_shape (the training grid)")
        train_grid_shape = tuple(int(s) for s in train_grid_shape)
        if len(train_grid_shape) != len(grid_shape):
            raise ValueError(
                f"grid {grid_shape} has {len(grid_shape)} axes but the training grid "
                f"{train_grid_shape} has {len(train_grid_shape)}"
            )
        spans = train_grid_shape
    elif scheme == "rescale":
        spans = grid_shape
    else:
        spans = (2,) * len(grid_shape)  # divide by 1
    axes = [
        torch.arange(size, device=device, dtype=torch.float64) / max(span - 1, 1)
        for size, span in zip(grid_shape, spans)
    ]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1).to(dtype)
