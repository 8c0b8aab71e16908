"""LieRE vision transformers: the model library (torch only).

import liere
model = liere.create_model("vit_small_patch16", encoding="liere8", num_classes=100)
"""

from liere import encodings, models
from liere.models import VisionTransformer, create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = [
    "VisionTransformer",
    "__version__",
    "create_model",
    "encodings",
    "list_models",
    "models",
    "register_model",
]
