"""Position encodings for N-d vision transformers: LieRE, RoPE (axial, mixed), STRING, APE.

``build(name, head_dim=..., num_heads=..., depth=..., num_axes=...)`` returns any of them behind
one interface (``PositionEncoding``); rotary ones also expose ``rotation(pos)``.
"""

from liere.encodings.absolute import LearnedAPE, SinCosAPE, sincos_table
from liere.encodings.base import AngleRotation, BlockRotation, PositionEncoding, RotaryEncoding
from liere.encodings.commuting import STRING
from liere.encodings.factory import ALIASES, ENCODINGS, build, list_encodings
from liere.encodings.liere import LieRE
from liere.encodings.positions import grid_positions
from liere.encodings.rope import RoPEAxial, RoPEMixed

__all__ = [
    "ALIASES",
    "ENCODINGS",
    "STRING",
    "AngleRotation",
    "BlockRotation",
    "LearnedAPE",
    "LieRE",
    "PositionEncoding",
    "RoPEAxial",
    "RoPEMixed",
    "RotaryEncoding",
    "SinCosAPE",
    "build",
    "grid_positions",
    "list_encodings",
    "sincos_table",
]
