"""Analytic FLOP counts of the ViT: matrix products and the position encoding, per sample.

A multiply-add is 2 FLOPs; norms, activations and softmax are left out (they are a few percent
and not what distinguishes encodings). The rotations' own computation is per step, not per
sample, and is measured by ``benchmarks/encodings.py`` rather than counted here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from liere.models.factory import create_model
from liere.models.vit import VisionTransformer


def count_flops(model: VisionTransformer, spatial: Sequence[int] | None = None) -> dict[str, int]:
    """Forward FLOPs per sample at input size ``spatial`` (default: the training size), by part.

    Returns ``{"patch_embed", "attention", "mlp", "encoding", "head", "total"}``.
    """
    grid = model.patch_embed.grid(spatial or model.img_size)
    n = math.prod(grid)
    t = n + model.num_prefix_tokens
    d = model.embed_dim
    depth = len(model.blocks)
    hidden = model.blocks[0].mlp.fc1.out_features
    parts = {
        "patch_embed": 2 * n * model.patch_embed.proj.in_features * d,
        # qkv and output projections, then q k^T and attn @ v
        "attention": depth * (2 * t * d * 4 * d + 2 * 2 * t * t * d),
        "mlp": depth * 2 * 2 * t * d * hidden,
        "encoding": model.encoding.apply_flops(t if model.encoding.is_rotary else n),
        "head": 2 * d * model.num_classes,
    }
    parts["total"] = sum(parts.values())
    return parts


def overhead_table(model_name: str, encodings: Sequence[str], **kwargs) -> list[tuple[str, int, int, float]]:
    """(encoding, encoding parameters, forward FLOPs per sample, % over the first) for one preset."""
    rows = []
    with torch.device("meta"):  # full-size presets without allocating them
        for enc in encodings:
            model = create_model(model_name, encoding=enc, **kwargs)
            rows.append(
                (enc, sum(p.numel() for p in model.encoding.parameters()), count_flops(model)["total"])
            )
    base = rows[0][2]
    return [(enc, params, flops, 100 * (flops / base - 1)) for enc, params, flops in rows]
