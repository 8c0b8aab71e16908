"""Helpers shared by the pipelines tests (imported by name: tests/pipelines is on sys.path under pytest)."""

from __future__ import annotations

import importlib
import os

import pytest

LIBRARY = {"ffcv": "ffcv", "dali": "nvidia.dali"}  # the module each optional backend needs


def require(module: str):
    """Import an optional library; skip without it locally, fail under CI=true (CI must run everything)."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} not installed (make test installs it)")


def require_backend(backend: str) -> None:
    """Skip (or, under CI=true, fail) when the library a backend needs is missing."""
    if backend in LIBRARY:
        require(LIBRARY[backend])


def make_loader(backend: str, root, dataset: str, split: str, **options):
    """build_loader over a prepared test split; skips (or fails under CI) when the backend's library is missing."""
    from pipelines import build_loader

    require_backend(backend)
    return build_loader(backend=backend, root=str(root), dataset=dataset, split=split, **options)
