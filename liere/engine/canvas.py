"""The canvas probe: each input, at its training size, pasted onto a larger blank canvas.

Scale stays as trained (a patch holds the same pixels), only the field of view grows: the question
is whether a model still finds its object at positions it never saw in training. Resizing the
input to a larger size asks another question (objects made bigger); both have their place.
"""

from __future__ import annotations

import torch


def place_on_canvas(
    x: torch.Tensor, canvas: list[int], patch_size: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """(B, C, *size) -> (B, C, *canvas): every input at its own random patch-aligned offset.

    The background is each input's own border colour (the mean of its outermost pixels per channel),
    so a dark-background digit lands on dark, whatever the normalisation.
    """
    b, c, *size = x.shape
    if len(canvas) != len(size) or any(n < s for n, s in zip(canvas, size)):
        raise ValueError(f"canvas {canvas} must hold the input {size} on every axis")
    if any((n - s) % p for n, s, p in zip(canvas, size, patch_size)):
        raise ValueError(
            f"canvas {canvas} minus input {size} is not a whole number of {tuple(patch_size)} patches"
        )
    border = torch.ones(size, dtype=torch.bool, device=x.device)
    border[tuple(slice(1, s - 1) for s in size)] = False
    fill = x[..., border].mean(dim=-1)  # (B, C)
    out = fill.reshape(b, c, *[1] * len(size)).expand(b, c, *canvas).clone()
    for i in range(b):
        offset = [
            p * int(torch.randint((n - s) // p + 1, (1,), generator=generator))
            for n, s, p in zip(canvas, size, patch_size)
        ]
        out[(i, slice(None), *(slice(o, o + s) for o, s in zip(offset, size)))] = x[i]
    return out
