"""Where prepared data lives under a root: `{root}/{dataset}/webdataset/{split}/` and `{root}/{dataset}/ffcv/`."""

from __future__ import annotations

from pathlib import Path

from pipelines.shards import MANIFEST


def webdataset_dir(root: str | Path, dataset: str, split: str) -> Path:
    return Path(root) / dataset / "webdataset" / split


def webdataset_manifest(root: str | Path, dataset: str, split: str) -> Path:
    return webdataset_dir(root, dataset, split) / MANIFEST


def ffcv_file(root: str | Path, dataset: str, split: str) -> Path:
    return Path(root) / dataset / "ffcv" / f"{split}.beton"


def ffcv_manifest(root: str | Path, dataset: str, split: str) -> Path:
    """The FFCV manifest (written after the .beton is renamed into place) marks the .beton complete."""
    return Path(root) / dataset / "ffcv" / f"{split}.json"
