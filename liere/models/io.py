"""Exported weights: one safetensors file whose metadata holds the model's constructor arguments.

``save_pretrained(model_state, path, name, kwargs)`` writes it, ``read_spec`` reads the spec back and
``load_weights`` fills a model (as timm's ``_helpers.py``); ``factory.load_model(path)`` rebuilds the
model from the file alone. Imports no other module of the package. Needs the ``safetensors``
package (imported when used).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

SPEC_KEY = "liere_model"


def save_pretrained(
    state_dict: dict[str, torch.Tensor], path: str | Path, name: str, kwargs: dict[str, Any]
) -> Path:
    """Write fp32 weights and the model spec ({"name", "kwargs"}) to ``path`` (.safetensors)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={SPEC_KEY: json.dumps({"name": name, "kwargs": kwargs})})
    tmp.replace(path)
    return path


def read_spec(path: str | Path) -> dict[str, Any]:
    """The {"name", "kwargs"} stored in an exported file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if SPEC_KEY not in meta:
        raise ValueError(f"{path}: no '{SPEC_KEY}' metadata; not a file written by save_pretrained")
    return json.loads(meta[SPEC_KEY])


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load exported (safetensors) or torch-saved weights into ``model``; mismatches are named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the model: missing keys {missing}, unexpected keys {unexpected}"
        )
    return model
