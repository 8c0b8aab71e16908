"""CIFAR-100 from its python pickles (`cifar-100-python/{train,test,meta}`), fine or coarse labels.

The official test set is served as the `val` split, as CIFAR papers (and LieRE's) evaluate on it.
The pickles are read with an unpickler that only admits plain containers and numpy arrays.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import DataError
from pipelines.sources.base import Sample, Source
from pipelines.sources.registry import register_source
from pipelines.sources.stats import channel_stats

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict:
    """Load a CIFAR batch pickle; DataError naming the file when it is missing or not a pickle."""
    if not path.is_file():
        raise DataError(f"{path}: missing (expected the cifar-100-python folder from the CIFAR site)")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _key(d: dict, key: str, path: Path) -> Any:
    if key not in d:
        raise DataError(f"{path}: no key {key!r} (has {sorted(d)})")
    return d[key]


@register_source
class Cifar100(Source):
    """CIFAR-100 (Krizhevsky 2009): 50k train / 10k test 32x32 RGB images, 100 fine or 20 coarse classes."""

    name = "cifar100"
    kind = "image"

    def __init__(self, src: str | os.PathLike, labels: str = "fine"):
        if labels not in ("fine", "coarse"):
            raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
        root = Path(src)
        if (root / "cifar-100-python").is_dir():
            root = root / "cifar-100-python"
        self.root, self.labels = root, labels
        meta_path = root / "meta"
        meta = load_pickle(meta_path)
        self.classes = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in _key(meta, f"{labels}_label_names", meta_path)
        ]
        self.channels = 3
        self._data: dict[str, np.ndarray] = {}
        self._targets: dict[str, np.ndarray] = {}
        self._names: dict[str, list[str]] = {}
        for split, file in (("train", "train"), ("val", "test")):
            path = root / file
            batch = load_pickle(path)
            data = np.asarray(_key(batch, "data", path))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(
                    f"{path}: 'data' has shape {data.shape} and dtype {data.dtype}, expected (N, 3072) uint8"
                )
            targets = np.asarray(_key(batch, f"{labels}_labels", path), dtype=np.int64)
            if len(targets) != len(data):
                raise DataError(f"{path}: {len(targets)} labels for {len(data)} images")
            self._data[split] = data.reshape(-1, 3, 32, 32)
            self._targets[split] = targets
            names = batch.get("filenames")
            self._names[split] = (
                [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else []
            )
        self.mean, self.std = channel_stats(self._data["train"], channel_axis=1)

    def splits(self) -> list[str]:
        return ["train", "val"]

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return len(self._targets[split])

    def get(self, split: str, index: int) -> Sample:
        names = self._names[split]
        origin = f"{self.root / ('train' if split == 'train' else 'test')}[{index}]"
        if names:
            origin += f" {names[index]}"
        img = np.ascontiguousarray(self._data[split][index].transpose(1, 2, 0))  # (32, 32, 3)
        return Sample(img, int(self._targets[split][index]), origin)

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "src": str(self.root.resolve()), "labels": self.labels}
