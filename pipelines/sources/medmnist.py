"""MedMNIST-3D volumes from the project's `.npz` files (keys `{train,val,test}_{images,labels}`).

Yang et al., "MedMNIST v2" (Scientific Data 2023): OrganMNIST3D, NoduleMNIST3D, AdrenalMNIST3D,
FractureMNIST3D, VesselMNIST3D, SynapseMNIST3D; 28^3 (or 64^3 in the `_64` files) uint8 volumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import DataError
from pipelines.sources.base import Sample, Source
from pipelines.sources.registry import register_source
from pipelines.sources.stats import channel_stats

# Number of classes per 3D set, from the MedMNIST v2 paper's Table 1 (multi-class / binary tasks).
KNOWN_CLASSES = {
    "organmnist3d": 11,
    "nodulemnist3d": 2,
    "adrenalmnist3d": 2,
    "fracturemnist3d": 3,
    "vesselmnist3d": 2,
    "synapsemnist3d": 2,
}


@register_source
class MedMNIST3D(Source):
    """One MedMNIST-3D `.npz` (a file, or a folder holding exactly one); volumes stored as (1, D, H, W)."""

    name = "medmnist3d"
    kind = "volume"

    def __init__(self, src: str | os.PathLike, num_classes: int | None = None):
        path = Path(src)
        if path.is_dir():
            found = sorted(path.glob("*.npz"))
            if len(found) != 1:
                raise DataError(
                    f"{path}: expected exactly one .npz, found {[p.name for p in found]}; pass the file"
                )
            path = found[0]
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        self.path = path
        try:
            npz = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from exc
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}
        with npz:
            keys = set(npz.files)
            for split in ("train", "val", "test"):
                ik, lk = f"{split}_images", f"{split}_labels"
                if ik not in keys and lk not in keys:
                    continue
                for k in (ik, lk):
                    if k not in keys:
                        raise DataError(f"{path}: key {k!r} missing (the file has {sorted(keys)})")
                images, labels = npz[ik], npz[lk]
                if images.ndim != 4:
                    raise DataError(f"{path}: {ik!r} has shape {images.shape}; a 3D set has (N, D, H, W)")
                if images.dtype != np.uint8:
                    if images.dtype.kind != "f":
                        raise DataError(
                            f"{path}: {ik!r} has dtype {images.dtype}, expected uint8 or float in [0, 1]"
                        )
                    images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
                labels = labels.reshape(len(labels), -1)
                if labels.shape[1] != 1:
                    raise DataError(
                        f"{path}: {lk!r} has shape {labels.shape}: multi-label sets are not supported"
                    )
                if len(labels) != len(images):
                    raise DataError(
                        f"{path}: {len(labels)} labels for {len(images)} volumes in split {split!r}"
                    )
                self._images[split] = images
                self._labels[split] = labels[:, 0].astype(np.int64)
        if "train" not in self._images:
            raise DataError(f"{path}: key 'train_images' missing (the file has {sorted(keys)})")
        stem = path.stem.lower().removesuffix("_64")
        n = num_classes or KNOWN_CLASSES.get(stem) or int(max(v.max() for v in self._labels.values())) + 1
        self.classes = [str(i) for i in range(n)]
        self.channels = 1
        self.mean, self.std = channel_stats(self._images["train"][:, None], channel_axis=1)
        self.set_name = stem

    def splits(self) -> list[str]:
        return list(self._images)

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return len(self._labels[split])

    def get(self, split: str, index: int) -> Sample:
        return Sample(
            self._images[split][index][None],
            int(self._labels[split][index]),
            f"{self.path}[{split}_images][{index}]",
        )

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "src": str(self.path.resolve()), "classes": len(self.classes)}
