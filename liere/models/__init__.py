"""N-d vision transformers with pluggable position encodings, and their registry (torch only).

``registry`` holds the names, ``presets`` registers them, ``factory`` builds them (weights through
``io``).
"""

from liere.models import presets as _presets  # noqa: F401  (registers the presets)
from liere.models.factory import create_model, load_model
from liere.models.flops import count_flops
from liere.models.io import save_pretrained
from liere.models.registry import list_models, register_model
from liere.models.vit import VisionTransformer

__all__ = [
    "VisionTransformer",
    "count_flops",
    "create_model",
    "list_models",
    "load_model",
    "register_model",
    "save_pretrained",
]
