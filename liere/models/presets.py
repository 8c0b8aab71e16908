"""The registered presets: ``vit_{size}_patch{p}`` for sizes nano..large and patches 4, 8, 16."""

from __future__ import annotations

from functools import partial

from liere.models.registry import register_model
from liere.models.vit import VisionTransformer

# size: (embed_dim, depth, num_heads); head dim 64 everywhere, so liere64 is dense at every size.
SIZES = {
    "nano": (128, 3, 2),  # CPU-scale sweeps: the compass benchmarks
    "micro": (128, 6, 2),  # CPU-scale: demo and tests
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
PATCHES = (4, 8, 16)


def _build(embed_dim: int, depth: int, num_heads: int, patch: int, **kwargs) -> VisionTransformer:
    kwargs.setdefault("patch_size", patch)
    return VisionTransformer(embed_dim=embed_dim, depth=depth, num_heads=num_heads, **kwargs)


for _size, (_dim, _depth, _heads) in SIZES.items():
    for _patch in PATCHES:
        register_model(f"vit_{_size}_patch{_patch}", partial(_build, _dim, _depth, _heads, _patch))
