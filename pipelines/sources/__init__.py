"""Source registry: name -> class, imported on first use so `import pipelines` stays light."""

from __future__ import annotations

import importlib
from typing import Any

from pipelines.sources.base import Sample, Source

_REGISTRY: dict[str, str] = {
    "digits": "pipelines.sources.embedded:Digits",
    "compass2d": "pipelines.sources.embedded:Compass2D",
    "compass3d": "pipelines.sources.embedded:Compass3D",
    "imagefolder": "pipelines.sources.imagefolder:ImageFolder",
    "imagenet": "pipelines.sources.imagefolder:ImageNet",
    "cifar100": "pipelines.sources.cifar:Cifar100",
    "medmnist3d": "pipelines.sources.medmnist:MedMNIST3D",
    "nifti": "pipelines.sources.volumes:NiftiFolder",
    "dicom": "pipelines.sources.volumes:DicomFolder",
    "ucf101": "pipelines.sources.ucf101:UCF101",
}


def list_sources() -> list[str]:
    """Names accepted by get_source and by launch/prepare_data.py."""
    return sorted(_REGISTRY)


def source_class(name: str) -> type[Source]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(list_sources())}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_source(name: str, **kwargs: Any) -> Source:
    """Instantiate the source `name` with its own arguments (e.g. src=..., size=...)."""
    return source_class(name)(**kwargs)


__all__ = ["Sample", "Source", "get_source", "list_sources", "source_class"]
