"""One factory for every position encoding: ``build(name, ...)`` over the registry's names."""

from __future__ import annotations

from collections.abc import Sequence

from liere.encodings.base import PositionEncoding
from liere.encodings.registry import ALIASES, ENCODINGS, list_encodings

__all__ = ["ALIASES", "ENCODINGS", "build", "list_encodings"]


def build(
    name: str,
    *,
    head_dim: int,
    num_heads: int,
    depth: int,
    num_axes: int,
    grid_shape: Sequence[int] | None = None,
    reference_grid: Sequence[int] | None = None,
    generator_init: str | None = None,
    **options,
) -> PositionEncoding:
    """Build the encoding ``name`` for a model of this geometry.

    ``grid_shape`` is the training grid of patches (needed by ``ape`` and by the proportional
    position scheme); ``options`` are the encoding's own (``block_size``, ``per_layer``, ``init``,
    ``theta``, ``positions``...). An unknown name or option is an error that names it.
    ``reference_grid`` (rotary encodings; additive ones ignore it) is the grid whose spacing the
    positions keep in place of ``grid_shape``'s: the pretraining grid when fine-tuning at a new size.
    ``generator_init`` is the ``init`` of encodings that take one (LieRE's generators), ignored by the
    others, and below an alias's preset and ``options`` (``rope_mixed_paper`` keeps the paper's init).
    """
    key = name.lower()
    preset: dict = {}
    if key in ALIASES:
        key, preset = ALIASES[key]
    if key not in ENCODINGS:
        raise ValueError(f"unknown position encoding {name!r}; expected one of {list_encodings()}")
    base = {"init": generator_init} if generator_init is not None and _takes(ENCODINGS[key], "init") else {}
    options = {**base, **preset, **options}
    if reference_grid is not None and getattr(ENCODINGS[key], "is_rotary", False):
        options["reference_grid"] = reference_grid
    try:
        return ENCODINGS[key](
            head_dim=head_dim,
            num_heads=num_heads,
            depth=depth,
            num_axes=num_axes,
            grid_shape=grid_shape,
            **options,
        )
    except TypeError as err:  # an option this encoding does not take
        raise TypeError(f"position encoding {name!r}: {err}") from None


def _takes(cls: type, option: str) -> bool:
    """Whether the encoding class's constructor has a keyword ``option``."""
    import inspect

    return option in inspect.signature(cls.__init__).parameters
