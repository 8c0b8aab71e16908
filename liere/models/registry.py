"""Model registry: names that are complete presets, one constructor vocabulary for all."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, fn: Callable[..., nn.Module]) -> None:
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, checkpoint_path: str | Path | None = None, **kwargs) -> nn.Module:
    """Build a registered model; ``kwargs`` override the preset (``encoding``, ``img_size``,
    ``patch_size``, ``in_chans``, ``num_classes``, ``drop_path_rate``, ``encoding_options``...).
    ``checkpoint_path`` loads weights (exported ``.safetensors`` or a torch state dict)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    model = _MODELS[name](**kwargs)
    if checkpoint_path is not None:
        from liere.models.io import load_weights

        load_weights(model, checkpoint_path)
    return model
