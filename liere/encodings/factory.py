"""One factory for every position encoding: ``build(name, ...)``."""

from __future__ import annotations

from collections.abc import Sequence

from liere.encodings.absolute import LearnedAPE, SinCosAPE
from liere.encodings.base import PositionEncoding
from liere.encodings.commuting import STRING
from liere.encodings.liere import LieRE
from liere.encodings.rope import RoPEAxial, RoPEMixed

ENCODINGS: dict[str, type[PositionEncoding]] = {
    "none": PositionEncoding,
    "ape": LearnedAPE,
    "ape_sincos": SinCosAPE,
    "rope_axial": RoPEAxial,
    "rope_mixed": RoPEMixed,
    "liere": LieRE,
    "string": STRING,
}
ALIASES: dict[str, tuple[str, dict]] = {
    "liere8": ("liere", {"block_size": 8}),
    "liere64": ("liere", {"block_size": 64}),
}


def list_encodings() -> list[str]:
    """Every name ``build`` accepts, aliases included."""
    return [*ENCODINGS, *ALIASES]


def build(
    name: str,
    *,
    head_dim: int,
    num_heads: int,
    depth: int,
    num_axes: int,
    grid_shape: Sequence[int] | None = None,
    **options,
) -> PositionEncoding:
    """Build the encoding ``name`` for a model of this geometry.

    ``grid_shape`` is the training grid of patches (needed by ``ape`` and by the proportional
    position scheme); ``options`` are the encoding's own (``block_size``, ``per_layer``, ``init``,
    ``theta``, ``positions``...). An unknown name or option is an error that names it.
    """
    key = name.lower()
    if key in ALIASES:
        key, preset = ALIASES[key]
        options = {**preset, **options}
    if key not in ENCODINGS:
        raise ValueError(f"unknown position encoding {name!r}; expected one of {list_encodings()}")
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
