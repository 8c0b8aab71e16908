"""LieRE vision transformers: the model library (torch only).

import liere
model = liere.create_model("vit_small_patch16", encoding="liere8", num_classes=100)
"""

from liere import encodings, models
from liere.models import (
    VisionTransformer,
    count_flops,
    create_model,
    list_models,
    load_model,
    register_model,
)

__version__ = "0.1.0"
__all__ = [
    "VisionTransformer",
    "__version__",
    "count_flops",
    "create_model",
    "encodings",
    "list_models",
    "load_model",
    "models",
    "register_model",
]
