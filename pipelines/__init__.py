"""Data pipelines: sources in users' layouts -> webdataset shards / FFCV betons -> one batch contract.

    from pipelines import build_loader, prepare
    prepare("digits", "data", formats=["webdataset", "ffcv"])
    loader = build_loader(backend="webdataset", root="data", dataset="digits", split="val",
                          batch_size=64, train=False, image_size=32, workers=2)
    for batch in loader: batch["input"], batch["label"]   # float (B, C, ...), int64 (B,)

sources/ read users' layouts, writers/ make prepared splits, loaders/ read them; the on-disk format both
sides share lives in shards/. Loader options use the words of the config's `data` section (workers,
crop_scale, eval_crop_ratio, mixup, cutmix, flip, randaugment).
Imports need torch and numpy only; webdataset, FFCV, DALI, PIL, nibabel, pydicom and PyAV are
imported inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.errors import BadSampleError, DataError
from pipelines.loaders.common import Loader, resolve_rank
from pipelines.prepare import dataset_info, ensure_prepared, format_summary, prepare
from pipelines.sources import get_source, list_sources

BACKENDS = ("webdataset", "ffcv", "dali")


def build_loader(
    backend: str = "webdataset",
    *,
    root: str,
    dataset: str,
    split: str,
    batch_size: int,
    train: bool,
    image_size: int | tuple[int, ...] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    randaugment: Sequence[int] | None = None,
    **kwargs: Any,
) -> Loader:
    """A loader over a prepared split; the same samples, order, labels and batch format for every backend.

    Options (kwargs), in the words of the config's `data` section: workers, flip (random left-right flips in
    training, default True; off for data whose labels tell left from right), crop_scale (area range of the
    random resized crop, default (0.08, 1)), eval_crop_ratio (evaluation crop; default 0.875 from 128 px up,
    else 1), mixup and cutmix (Beta alphas; 0: off), label_smoothing; drop_last and shuffle (default: train),
    verify (check shard checksums), device (DALI: "cpu", "gpu" or None = auto).
    `randaugment`: None (off) or [num_ops, magnitude], integers num_ops >= 1 and magnitude 0..30 (strength
    magnitude / 30 of each op's maximum; pipelines/randaugment.py): RandAugment on 2D training images, every
    backend; a ValueError for 3D volumes and video when train=True; ignored when train=False.
    `rank`/`world_size` default to torch.distributed's, else RANK/WORLD_SIZE, else 0/1.
    """
    from pipelines import paths

    rank, world_size = resolve_rank(rank, world_size)
    common = dict(
        batch_size=batch_size,
        train=train,
        image_size=image_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        randaugment=randaugment,
    )
    if backend == "webdataset":
        from pipelines.loaders.webdataset import WebDatasetLoader

        return WebDatasetLoader(paths.webdataset_dir(root, dataset, split), **common, **kwargs)
    if backend == "ffcv":
        from pipelines.loaders.ffcv import FFCVLoader

        return FFCVLoader(
            paths.ffcv_file(root, dataset, split),
            paths.ffcv_manifest(root, dataset, split),
            **common,
            **kwargs,
        )
    if backend == "dali":
        from pipelines.loaders.dali import DALILoader

        return DALILoader(paths.webdataset_dir(root, dataset, split), **common, **kwargs)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


__all__ = [
    "BACKENDS",
    "BadSampleError",
    "DataError",
    "Loader",
    "build_loader",
    "dataset_info",
    "ensure_prepared",
    "format_summary",
    "get_source",
    "list_sources",
    "prepare",
]
