"""Build registered models, with or without weights (as timm's ``_factory.py``).

``create_model`` looks the entry point up in the registry and loads weights through ``io``;
``load_model`` rebuilds an exported model from its file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from liere.models.io import load_weights, read_spec
from liere.models.registry import model_entrypoint


def create_model(name: str, checkpoint_path: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` override the preset (``encoding``, ``img_size``,
    ``patch_size``, ``in_chans``, ``num_classes``, ``drop_path_rate``, ``encoding_options``...).
    ``checkpoint_path`` loads weights (exported ``.safetensors`` or a torch state dict)."""
    model = model_entrypoint(name)(**kwargs)
    if checkpoint_path is not None:
        load_weights(model, checkpoint_path)
    return model


def load_model(path: str | Path, **overrides: Any) -> nn.Module:
    """Rebuild an exported model from its file (``overrides`` change constructor arguments, e.g.
    ``img_size`` for a different training grid)."""
    spec = read_spec(path)
    return create_model(spec["name"], checkpoint_path=path, **{**spec["kwargs"], **overrides})
