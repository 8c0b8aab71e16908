"""Turn a source into prepared splits (webdataset shards, FFCV betons), once; and wait for it on other ranks."""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pipelines import paths
from pipelines.errors import DataError
from pipelines.shards import CHECKSUM_ALGORITHM, fingerprint, write_json
from pipelines.sources import get_source, source_class
from pipelines.sources.base import Source
from pipelines.writers.webdataset import write_webdataset_split

log = logging.getLogger(__name__)

FORMATS = ("webdataset", "ffcv")


# what dataset_info takes from a split's manifest (the stream loaders read the same from a URL)
INFO_KEYS = (
    "name",
    "kind",
    "num_classes",
    "classes",
    "channels",
    "spatial_rank",
    "native_size",
    "mean",
    "std",
)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the data extra; without it, no bar
        return None
    return tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True, smoothing=0.1)


def make_source(
    source: str | Source, src: str | os.PathLike | None, image_size: int | None, **kwargs: Any
) -> tuple[Source, int | None]:
    """Build the source; for generated/embedded sets `image_size` is their native size, for others a resize."""
    if isinstance(source, Source):
        return source, image_size
    cls = source_class(source)
    params = _init_params(cls)
    if cls.needs_src:
        if src is None:
            raise DataError(
                f"source {source!r} reads files: pass --src PATH (the folder that holds the data set)"
            )
        kwargs["src"] = src
    elif src is not None:
        log.warning("source %r needs no --src; ignoring %s", source, src)
    if image_size is not None and "size" in params and "size" not in kwargs:
        kwargs["size"] = image_size
        image_size = None
    if image_size is not None and "shape" in params and "shape" not in kwargs:  # volume folders: a cube
        kwargs["shape"] = (image_size,) * 3
        image_size = None
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"source {source!r} takes no argument(s) {unknown}; it takes {list(params)[1:]}")
    return get_source(source, **kwargs), image_size


def _init_params(cls: type) -> list[str]:
    """Keyword arguments a source's constructor accepts, following **kwargs into its base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [
            p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _run_writer(
    write: Callable[..., dict[str, Any]], total: int, desc: str, progress: bool
) -> tuple[dict[str, Any], float]:
    """Run one writer under a progress bar of `total` samples; returns what it wrote and the seconds it took."""
    bar = _progress_bar(total, desc, progress)
    t0 = time.time()
    written = write(progress=bar.update if bar else None)
    if bar:
        bar.close()
    return written, round(time.time() - t0, 2)


def _row(
    split: str, fmt: str, written: dict[str, Any], *, skipped: int, seconds: float, path: Path
) -> dict[str, Any]:
    """One summary row of prepare(): what was written for one split in one format."""
    shards = written["shardlist"] if fmt == "webdataset" else None
    return {
        "split": split,
        "format": fmt,
        "samples": written["num_samples"],
        "files": len(shards) if shards is not None else 1,
        "bytes": sum(s["filesize"] for s in shards) if shards is not None else written["filesize"],
        "skipped": skipped,
        "repaired": int(written.get("num_repaired", 0)),
        "seconds": seconds,
        "path": str(path),
    }


def _check_formats(formats: Sequence[str]) -> list[str]:
    formats = [f.strip() for f in formats if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {bad}; choose from {FORMATS}")
    return formats


def prepare(
    source: str | Source,
    out: str | os.PathLike,
    *,
    src: str | os.PathLike | None = None,
    formats: Sequence[str] = ("webdataset",),
    image_size: int | None = None,
    workers: int = 1,
    shard_size: int = 1000,
    quality: int = 90,
    volume_dtype: str = "uint8",
    skip_bad: bool = False,
    splits: Sequence[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    ffcv_max_resolution: int | None = None,
    ffcv_write_mode: str | None = None,
    **source_kwargs: Any,
) -> list[dict[str, Any]]:
    """Write `formats` for every split of `source` under `out/{name}/`; returns one summary row per output.

    FFCV betons are converted from the webdataset shards of the same split (written first when absent),
    so both hold the same samples with the same labels and pixels.
    """
    formats = _check_formats(formats)
    src_obj, resize = make_source(source, src, image_size, **source_kwargs)
    if resize is not None and src_obj.kind == "volume":
        log.warning(
            "%s: --image-size applies to images; volumes keep their stored shape (use -o shape=...)",
            src_obj.name,
        )
        resize = None
    name = name or src_obj.name
    shard_options = dict(
        name=name,
        shard_size=shard_size,
        workers=workers,
        image_size=resize,
        quality=quality,
        dtype=volume_dtype,
        skip_bad=skip_bad,
        overwrite=overwrite,
    )
    ffcv_options = dict(
        workers=workers,
        quality=quality,
        max_resolution=ffcv_max_resolution,
        write_mode=ffcv_write_mode,
        overwrite=overwrite,
    )
    if "ffcv" not in formats:
        ffcv_options = None
    rows = []
    for split in splits or src_obj.splits():
        rows += _prepare_split(
            src_obj, split, out, shard_options=shard_options, ffcv_options=ffcv_options, progress=progress
        )
    return rows


def _prepare_split(
    source: Source,
    split: str,
    out: str | os.PathLike,
    *,
    shard_options: dict[str, Any],
    ffcv_options: dict[str, Any] | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """Write one split's shards, then (with `ffcv_options`) its .beton; returns their summary rows."""
    name = shard_options["name"]
    shards = paths.webdataset_dir(out, name, split)
    write = partial(write_webdataset_split, source, split, shards, **shard_options)
    manifest, seconds = _run_writer(write, source.num_samples(split), f"{name}/{split} webdataset", progress)
    skipped = manifest["num_skipped"]
    rows = [_row(split, "webdataset", manifest, skipped=skipped, seconds=seconds, path=shards)]
    if ffcv_options is not None:
        from pipelines.writers.ffcv import write_ffcv_split

        beton = paths.ffcv_file(out, name, split)
        write = partial(
            write_ffcv_split, shards, beton, paths.ffcv_manifest(out, name, split), **ffcv_options
        )
        info, seconds = _run_writer(write, manifest["num_samples"], f"{name}/{split} ffcv", progress)
        rows.append(_row(split, "ffcv", info, skipped=skipped, seconds=seconds, path=beton))
        rows[-1]["repaired"] = rows[0]["repaired"]  # the .beton holds the webdataset split's samples
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of prepare()'s rows."""
    head = (
        f"{'split':<8} {'format':<11} {'samples':>9} {'files':>6} {'MB':>9} {'skipped':>8} {'repaired':>8} "
        f"{'seconds':>8}  path"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['split']:<8} {r['format']:<11} {r['samples']:>9} {r['files']:>6} {r['bytes'] / 1e6:>9.2f} "
            f"{r['skipped']:>8} {r.get('repaired', 0):>8} {r['seconds']:>8.2f}  {r['path']}"
        )
    return "\n".join(lines)


PREPARED = "prepared.json"
_NOT_IDENTITY = ("workers", "progress", "overwrite")  # arguments that do not change what is written


def _request_fingerprint(source: str, formats: Sequence[str], kwargs: dict[str, Any]) -> str:
    return fingerprint(
        {
            "source": source,
            "formats": sorted(formats),
            "checksums": CHECKSUM_ALGORITHM,  # data prepared before per-sample checksums is prepared again
            # a source that gained splits or changed its samples says so with a revision (0: never)
            **({"revision": revision} if (revision := getattr(source_class(source), "revision", 0)) else {}),
            **{k: v for k, v in kwargs.items() if k not in _NOT_IDENTITY},
        }
    )


def _is_prepared(root: str | os.PathLike, name: str, request: str) -> bool:
    path = Path(root) / name / PREPARED
    try:
        return request in json.loads(path.read_text()).get("requests", [])
    except (OSError, json.JSONDecodeError):
        return False


def _mark_prepared(root: str | os.PathLike, name: str, request: str, rows: list[dict[str, Any]]) -> None:
    path = Path(root) / name / PREPARED
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        old = {}
    requests = [r for r in old.get("requests", []) if r != request] + [request]
    write_json(path, {"requests": requests[-20:], "outputs": rows})


def ensure_prepared(
    dataset: str,
    root: str | os.PathLike,
    *,
    formats: Sequence[str] = ("webdataset",),
    rank: int | None = None,
    world_size: int | None = None,
    timeout: float = 3600.0,
    poll: float = 0.5,
    progress: bool | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Prepare `dataset` under `root` unless this same request was prepared before; safe on many ranks.

    Rank 0 prepares (under a lock file, so independent jobs sharing `root` do not collide; prepare()
    itself resumes and keeps complete splits) and then records the request in `NAME/prepared.json`;
    the other ranks wait for that record without reading the source. Returns dataset_info(root, name).
    """
    from pipelines.loaders.common import resolve_rank

    rank, _ = resolve_rank(rank, world_size)
    cls = source_class(dataset)
    if cls.needs_src and "src" not in kwargs:
        raise DataError(f"{dataset!r} reads files: ensure_prepared needs src=...")
    name = kwargs.get("name") or dataset
    request = _request_fingerprint(dataset, formats, kwargs)
    if not _is_prepared(root, name, request):
        if rank == 0:
            lock = Path(root) / name / ".prepare.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            with open(lock, "w") as fh:
                import fcntl

                # a second job sharing root waits here, then finds the work done
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    if not _is_prepared(root, name, request):
                        rows = prepare(dataset, root, formats=formats, progress=bool(progress), **kwargs)
                        _mark_prepared(root, name, request, rows)
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            deadline = time.time() + timeout
            while not _is_prepared(root, name, request):
                if time.time() > deadline:
                    raise TimeoutError(f"rank {rank}: {name} under {root} not prepared after {timeout:.0f} s")
                time.sleep(poll)
    return dataset_info(root, name)


def dataset_info(root: str | os.PathLike, dataset: str) -> dict[str, Any]:
    """Metadata to size a model: num_classes, channels, spatial_rank, native_size, classes, mean, std, splits."""
    base = Path(root) / dataset
    manifests = {}
    for m in sorted(base.glob("webdataset/*/manifest.json")) + sorted(base.glob("ffcv/*.json")):
        data = json.loads(m.read_text())
        manifests.setdefault(data["split"], data)
    if not manifests:
        raise DataError(
            f"{base}: no prepared split (no manifest.json); run launch/prepare_data.py {dataset} first"
        )
    first = manifests.get("train") or next(iter(manifests.values()))
    info = {k: first[k] for k in INFO_KEYS}
    info["splits"] = {s: m["num_samples"] for s, m in manifests.items()}
    info["formats"] = sorted(
        {"webdataset" for _ in base.glob("webdataset/*/manifest.json")}
        | {"ffcv" for _ in base.glob("ffcv/*.json")}
    )
    return info
