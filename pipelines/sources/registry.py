"""Source registry: name -> class, filled by `@register_source` in each source module.

The package `__init__` imports every source module, so the registry is complete once
`pipelines.sources` is imported; the modules import their optional libraries (PIL, nibabel, pydicom,
PyAV, scikit-learn) inside the functions that use them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pipelines.sources.base import Source

_SOURCES: dict[str, type[Source]] = {}

S = TypeVar("S", bound=type[Source])


def register_source(cls: S) -> S:
    """Class decorator: make a Source subclass available under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name to register it under")
    if cls.name in _SOURCES:
        raise ValueError(f"source {cls.name!r} is already registered ({_SOURCES[cls.name].__qualname__})")
    _SOURCES[cls.name] = cls
    return cls


def list_sources() -> list[str]:
    """Names accepted by get_source and by launch/prepare_data.py."""
    return sorted(_SOURCES)


def extent_sources() -> list[str]:
    """Names of the sources that draw ``val-extent<S>`` splits (evaluation protocol ``extent``)."""
    return [n for n in list_sources() if getattr(_SOURCES[n], "draws_extent", False)]


def source_class(name: str) -> type[Source]:
    """The class registered under `name`; a KeyError listing the known names otherwise."""
    if name not in _SOURCES:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(list_sources())}")
    return _SOURCES[name]


def get_source(name: str, **kwargs: Any) -> Source:
    """Instantiate the source `name` with its own arguments (e.g. src=..., size=...)."""
    return source_class(name)(**kwargs)
