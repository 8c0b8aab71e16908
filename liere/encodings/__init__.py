"""Position encodings for N-d vision transformers: LieRE, RoPE (axial, mixed), STRING, ComRoPE, APE (torch only).

``build(name, head_dim=..., num_heads=..., depth=..., num_axes=...)`` returns any of them behind
one interface (``PositionEncoding``); rotary ones also expose ``rotation(pos)``. Each sibling
module registers its classes with ``@register_encoding``; importing them here fills the registry.
"""

# Registration order (the order list_encodings() reports) is this import order.
# isort: off
from liere.encodings import base, absolute, rope, liere, commuting, comrope  # noqa: F401
# isort: on

from liere.encodings.absolute import LearnedAPE, SinCosAPE, sincos_table
from liere.encodings.augment import PositionAugment
from liere.encodings.base import AngleRotation, BlockRotation, PositionEncoding, RotaryEncoding
from liere.encodings.commuting import STRING, CirculantSTRING
from liere.encodings.comrope import ComRoPEAP, ComRoPELD
from liere.encodings.factory import build
from liere.encodings.liere import LieRE
from liere.encodings.positions import grid_positions
from liere.encodings.registry import ALIASES, ENCODINGS, list_encodings, register_encoding
from liere.encodings.rope import RoPEAxial, RoPEMixed, RoPEMixedAPE

__all__ = [
    "ALIASES",
    "ENCODINGS",
    "STRING",
    "AngleRotation",
    "BlockRotation",
    "CirculantSTRING",
    "ComRoPEAP",
    "ComRoPELD",
    "LearnedAPE",
    "LieRE",
    "PositionAugment",
    "PositionEncoding",
    "RoPEAxial",
    "RoPEMixed",
    "RoPEMixedAPE",
    "RotaryEncoding",
    "SinCosAPE",
    "build",
    "grid_positions",
    "list_encodings",
    "register_encoding",
    "sincos_table",
]
