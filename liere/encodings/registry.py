"""Encoding registry: a dict filled by ``@register_encoding`` on each encoding class (as timm's
``_registry.py``). It imports nothing from the package; ``factory.build`` constructs.

Registration order (the import order in ``liere.encodings.__init__``) is the order
``list_encodings()`` reports, aliases last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

ENCODINGS: dict[str, type] = {}  # name -> class
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}  # alias -> (name, preset options)


def register_encoding(name: str, *, aliases: dict[str, dict[str, Any]] | None = None) -> Callable[[T], T]:
    """Class decorator: register the class under ``name``, and ``aliases`` as that name with preset
    options (``{"liere8": {"block_size": 8}}``). A name registered twice is an error."""

    def register(cls: T) -> T:
        for key in (name, *(aliases or {})):
            if key in ENCODINGS or key in ALIASES:
                raise ValueError(f"position encoding {key!r} is already registered")
        ENCODINGS[name] = cls
        ALIASES.update({alias: (name, dict(options)) for alias, options in (aliases or {}).items()})
        return cls

    return register


def list_encodings() -> list[str]:
    """Every name ``build`` accepts, aliases included."""
    return [*ENCODINGS, *ALIASES]
