"""The package boundary: the model library (liere, liere.models, liere.encodings) needs torch alone.

Each check runs in a fresh interpreter, so nothing another test imported can hide an import.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what only the engine, the pipelines or the launchers may import
TRAINING_ONLY = [
    "deepspeed",
    "mlflow",
    "omegaconf",
    "submitit",
    "pipelines",
    "webdataset",
    "wids",
    "ffcv",
    "nvidia.dali",
    "liere.engine",
]

IMPORT = """
import json, sys
import liere, liere.models, liere.encodings
import torch
m = liere.create_model("vit_micro_patch4", encoding="liere8", num_classes=3, img_size=16)
assert m(torch.randn(1, 3, 16, 16)).shape == (1, 3)
names = json.loads(sys.argv[1])
print(json.dumps(sorted(n for n in sys.modules if any(n == p or n.startswith(p + ".") for p in names))))
"""

BLOCKER = """
import importlib.abc, sys
BLOCKED = {"deepspeed", "mlflow", "webdataset", "wids", "ffcv", "nvidia", "submitit", "omegaconf", "pipelines"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in this test: {name}")
sys.meta_path.insert(0, Block())
import liere, liere.models, liere.encodings
import torch
m = liere.create_model("vit_micro_patch4", encoding="liere8", num_classes=3, img_size=16)
assert m(torch.randn(1, 3, 16, 16)).shape == (1, 3)
loaded = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_model_library_imports_no_training_or_loader_library():
    """With every library installed, importing the model library loads none of the training ones."""
    out = _python(IMPORT, json.dumps(TRAINING_ONLY))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_model_library_imports_with_torch_alone():
    """With the training and loader libraries made unimportable, the model library still works."""
    out = _python(BLOCKER)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
