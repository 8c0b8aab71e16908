"""LieRE vision transformers, and the system that trains them.

``liere.models`` and ``liere.encodings`` (the model library, imported here) need torch alone, so
they are usable on their own (exported ``.safetensors`` weights also need ``safetensors``).
``liere.engine`` and the rest of ``liere`` (not imported here) train with DeepSpeed, track with MLflow
and read data through ``pipelines``: they need the ``train`` extra (and ``data`` for the loaders).

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
