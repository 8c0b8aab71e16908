"""Sources: random access to data sets in the layouts users already have, registered by name.

Each module registers its classes with `@register_source`; importing them here fills the registry.
"""

from __future__ import annotations

from pipelines.sources import cifar, embedded, imagefolder, medmnist, ucf101, volumes  # noqa: F401  (they register)
from pipelines.sources.base import Sample, Source
from pipelines.sources.registry import extent_sources, get_source, list_sources, register_source, source_class

__all__ = [
    "Sample", "Source", "extent_sources", "get_source", "list_sources", "register_source", "source_class",
]  # fmt: skip
