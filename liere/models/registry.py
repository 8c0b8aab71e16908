"""Model registry: names that are complete presets, one constructor vocabulary for all.

A pure registry (as timm's ``_registry.py``): a dict filled by ``@register_model`` in the modules
that define presets, and lookups. It imports nothing back; ``factory.create_model`` builds.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

ModelFn = Callable[..., nn.Module]

_MODELS: dict[str, ModelFn] = {}


def register_model(name: str | ModelFn, fn: ModelFn | None = None) -> ModelFn:
    """Register a model entry point: ``@register_model`` on a function (its name is the model's),
    or ``register_model(name, fn)``. A name registered twice is an error."""
    if fn is None:
        if not callable(name):
            raise TypeError("register_model(name, fn) needs the entry point fn")
        name, fn = name.__name__, name
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_entrypoint(name: str) -> ModelFn:
    """The function registered under ``name``; an unknown name is an error listing the known ones."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _MODELS[name]
