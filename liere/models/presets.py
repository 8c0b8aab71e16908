"""The registered presets: ``vit_{size}_patch{p}`` for sizes nano..large and patches 4, 8, 16.

Each preset is an entry point registered with ``@register_model`` (as in timm); ``kwargs`` override
any constructor argument of ``VisionTransformer``, ``patch_size`` included.
"""

from __future__ import annotations

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


def _vit(size: str, patch: int, **kwargs) -> VisionTransformer:
    embed_dim, depth, num_heads = SIZES[size]
    kwargs.setdefault("patch_size", patch)
    return VisionTransformer(embed_dim=embed_dim, depth=depth, num_heads=num_heads, **kwargs)


@register_model
def vit_nano_patch4(**kwargs) -> VisionTransformer:
    return _vit("nano", 4, **kwargs)


@register_model
def vit_nano_patch8(**kwargs) -> VisionTransformer:
    return _vit("nano", 8, **kwargs)


@register_model
def vit_nano_patch16(**kwargs) -> VisionTransformer:
    return _vit("nano", 16, **kwargs)


@register_model
def vit_micro_patch4(**kwargs) -> VisionTransformer:
    return _vit("micro", 4, **kwargs)


@register_model
def vit_micro_patch8(**kwargs) -> VisionTransformer:
    return _vit("micro", 8, **kwargs)


@register_model
def vit_micro_patch16(**kwargs) -> VisionTransformer:
    return _vit("micro", 16, **kwargs)


@register_model
def vit_tiny_patch4(**kwargs) -> VisionTransformer:
    return _vit("tiny", 4, **kwargs)


@register_model
def vit_tiny_patch8(**kwargs) -> VisionTransformer:
    return _vit("tiny", 8, **kwargs)


@register_model
def vit_tiny_patch16(**kwargs) -> VisionTransformer:
    return _vit("tiny", 16, **kwargs)


@register_model
def vit_small_patch4(**kwargs) -> VisionTransformer:
    return _vit("small", 4, **kwargs)


@register_model
def vit_small_patch8(**kwargs) -> VisionTransformer:
    return _vit("small", 8, **kwargs)


@register_model
def vit_small_patch16(**kwargs) -> VisionTransformer:
    return _vit("small", 16, **kwargs)


@register_model
def vit_base_patch4(**kwargs) -> VisionTransformer:
    return _vit("base", 4, **kwargs)


@register_model
def vit_base_patch8(**kwargs) -> VisionTransformer:
    return _vit("base", 8, **kwargs)


@register_model
def vit_base_patch16(**kwargs) -> VisionTransformer:
    return _vit("base", 16, **kwargs)


@register_model
def vit_large_patch4(**kwargs) -> VisionTransformer:
    return _vit("large", 4, **kwargs)


@register_model
def vit_large_patch8(**kwargs) -> VisionTransformer:
    return _vit("large", 8, **kwargs)


@register_model
def vit_large_patch16(**kwargs) -> VisionTransformer:
    return _vit("large", 16, **kwargs)
