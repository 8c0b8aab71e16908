"""Data pipelines: sources in users' layouts -> webdataset shards / FFCV betons -> one batch contract.

    from pipelines import build_loader, prepare
    prepare("digits", "data", formats=["webdataset", "ffcv"])
    loader = build_loader(backend="webdataset", root="data", dataset="digits", split="val",
                          batch_size=64, train=False, image_size=32, workers=2)
    for batch in loader: batch["input"], batch["label"]   # float (B, C, ...), int64 (B,)

sources/ read users' layouts, writers/ make prepared splits, loaders/ read them; the on-disk format both
sides share lives in shards/. Loader options use the words of the config's `data` section (workers,
crop_scale, pad_crop, eval_crop_ratio, mixup, cutmix, flip, randaugment).
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
ACCESS_MODES = ("indexed", "stream")


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
    access: str = "indexed",
    **kwargs: Any,
) -> Loader:
    """A loader over a prepared split; the same samples, order, labels and batch format for every backend.

    `access`: "indexed" (default: samples by position, the same order in every backend, batch-exact resume) or
    "stream" (webdataset and DALI: the libraries' own readers front to back; docs/data.md "Access modes"); a
    stream also takes `urls` (webdataset: a brace pattern or list of shard URLs, `{split}` replaced, `pipe:`
    commands included; `root` may be a URL too) and `shuffle_buffer` (samples; default 1000).
    Options (kwargs), in the words of the config's `data` section: workers, flip (random left-right flips in
    training, default True; off for data whose labels tell left from right), crop_scale (area range of the
    random resized crop, default (0.08, 1)), pad_crop (2D training images: torchvision's RandomCrop(size,
    padding=pad_crop) instead of the random resized crop, zeros around; 0: off), eval_crop_ratio (evaluation crop; default 0.875 from 128 px up,
    else 1), mixup and cutmix (Beta alphas; 0: off), label_smoothing; drop_last and shuffle (default: train),
    verify (check shard checksums), device (DALI: "cpu", "gpu" or None = auto).
    `randaugment`: None (off) or [num_ops, magnitude], integers num_ops >= 1 and magnitude 0..30 (strength
    magnitude / 30 of each op's maximum; pipelines/randaugment.py): RandAugment on 2D training images, every
    backend; a ValueError for 3D volumes and video when train=True; ignored when train=False.
    `rank`/`world_size` default to torch.distributed's, else RANK/WORLD_SIZE, else 0/1.
    """
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
    if access == "stream":
        return _stream_loader(backend, root, dataset, split, **common, **kwargs)
    if access != "indexed":
        raise ValueError(f"unknown access {access!r}; choose from {ACCESS_MODES}")
    if kwargs.pop("urls", None) is not None:
        raise ValueError("urls are read by a stream: pass access='stream' (data.access=stream)")
    return _indexed_loader(backend, root, dataset, split, **common, **kwargs)


def _indexed_loader(backend: str, root: str, dataset: str, split: str, **kwargs: Any) -> Loader:
    """build_loader(access="indexed"): the backend's loader reading samples by position."""
    from pipelines import paths

    if backend == "webdataset":
        from pipelines.loaders.webdataset import WebDatasetLoader

        return WebDatasetLoader(paths.webdataset_dir(root, dataset, split), **kwargs)
    if backend == "ffcv":
        from pipelines.loaders.ffcv import FFCVLoader

        return FFCVLoader(
            paths.ffcv_file(root, dataset, split),
            paths.ffcv_manifest(root, dataset, split),
            **kwargs,
        )
    if backend == "dali":
        from pipelines.loaders.dali import DALILoader

        return DALILoader(paths.webdataset_dir(root, dataset, split), **kwargs)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def _stream_loader(
    backend: str, root: str, dataset: str, split: str, urls: Any = None, **kwargs: Any
) -> Loader:
    """build_loader(access="stream"): webdataset's pipeline (any URL) or DALI's fn.readers.webdataset (local)."""
    from pipelines import paths

    if backend == "webdataset":
        from pipelines.loaders.stream import build_stream_loader

        return build_stream_loader(root, dataset, split, urls, **kwargs)
    if backend == "dali":
        if urls:
            raise ValueError(
                "urls with the DALI stream: DALI's reader needs local shards (use backend webdataset)"
            )
        from pipelines.loaders.dali_stream import DALIStreamLoader

        return DALIStreamLoader(paths.webdataset_dir(root, dataset, split), **kwargs)
    if backend in BACKENDS:
        raise ValueError(f"backend {backend!r} has no stream access; streams: webdataset, dali")
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


__all__ = [
    "ACCESS_MODES",
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
