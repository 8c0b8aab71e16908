"""Write one split of a source as webdataset tar shards, in parallel processes, resumably.

Layout: `{out}/{name}-{split}-{index:06d}.tar` with members `{key}.cls`, `{key}.idx` (the sample's
index in the source split), `{key}.jpg` or `{key}.npy`, and `{key}.crc32` (the CRC-32 of the other three,
shards/checksum.py, checked by the loaders before decoding); a DALI index file `{...}.idx` beside each
tar; `manifest.json` last. A shard is written under a temporary name and renamed when complete; a
hidden `.done` record beside it lets an interrupted run reuse finished shards.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.errors import BadSampleError, DataError
from pipelines.shards import (
    CHECKSUM_ALGORITHM,
    CHECKSUM_MEMBER,
    FORMAT_VERSION,
    MANIFEST,
    dali_index_lines,
    encode_crc32,
    encode_image,
    encode_volume,
    fingerprint,
    index_path,
    sample_crc32,
    sha256_file,
    shard_name,
    write_json,
)
from pipelines.sources.base import Sample, Source

log = logging.getLogger(__name__)

# what a shard task reads of the params
_TASK_PARAMS = ("split", "image_size", "quality", "dtype", "skip_bad")

_SOURCE: Source | None = None  # set in each worker process by _init_worker (inherited under fork)


def _init_worker(source: Source) -> None:
    global _SOURCE
    _SOURCE = source
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _encode(source: Source, task: dict[str, Any], i: int) -> tuple[Sample, str, bytes, tuple[int, ...]]:
    """Sample `i` of the task's split as (sample, extension, stored bytes, spatial shape); BadSampleError if unusable."""
    sample = source.get(task["split"], i)
    if source.kind == "image":
        payload, shape = encode_image(
            sample, source.channels, task["image_size"], task["quality"], source.jpeg_subsampling
        )
        ext = "jpg"
    else:
        payload, shape = encode_volume(sample, source.channels, task["dtype"])
        ext = "npy"
    if not 0 <= sample.label < source.num_classes:
        raise BadSampleError(sample.origin, f"label {sample.label} outside [0, {source.num_classes})")
    return sample, ext, payload, shape


def _write_tar(source: Source, task: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write the task's samples into the tar at `path` (mtime 0: the same input gives the same bytes); returns
    the counts that go into the shard's record: nsamples, skipped, shapes, labels."""
    import webdataset as wds

    skipped: list[list[str]] = []
    repaired: list[list[str]] = []
    shapes: Counter = Counter()
    labels: Counter = Counter()
    count = 0
    with open(path, "wb") as f, wds.TarWriter(f, mtime=0) as sink:
        for i in range(task["start"], task["stop"]):
            try:
                sample, ext, payload, shape = _encode(source, task, i)
            except BadSampleError as exc:
                if not task["skip_bad"]:
                    raise
                skipped.append([exc.origin, exc.reason])
                continue
            cls, idx = str(sample.label).encode(), str(i).encode()
            crc = encode_crc32(sample_crc32(cls, idx, payload))
            sink.write({"__key__": f"{i:09d}", "cls": cls, "idx": idx, ext: payload, CHECKSUM_MEMBER: crc})
            if sample.repaired:
                repaired.append([sample.origin, sample.repaired])
            shapes[shape] += 1
            labels[sample.label] += 1
            count += 1
    return {"nsamples": count, "skipped": skipped, "repaired": repaired, "shapes": shapes, "labels": labels}


def _write_index(tar: Path) -> Path:
    """Write the DALI index file of a finished shard (under a temporary name, then renamed)."""
    idx = index_path(tar)
    tmp = tar.parent / f".{idx.name}.tmp{os.getpid()}"
    tmp.write_text("\n".join(dali_index_lines(tar)) + "\n")
    os.replace(tmp, idx)
    return idx


def _write_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Write shard `task["shard"]` covering source indices [start, stop); returns its record."""
    source = _SOURCE
    assert source is not None
    out = Path(task["out"])
    url = task["url"]
    final = out / url
    tmp = out / f".{url}.tmp{os.getpid()}"
    try:
        counts = _write_tar(source, task, tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    idx = _write_index(final)
    record = {
        "url": url,
        "nsamples": counts["nsamples"],
        "filesize": final.stat().st_size,
        "sha256": sha256_file(final),
        "dali_index": idx.name,
        "first_index": task["start"],
        "skipped": counts["skipped"],
        "repaired": counts["repaired"],
        "shapes": [[list(k), v] for k, v in counts["shapes"].items()],
        "labels": {str(k): v for k, v in counts["labels"].items()},
        "fingerprint": task["fingerprint"],
    }
    write_json(out / f".{url}.done", record)
    return record


def _reusable(out: Path, url: str, fp: str) -> dict[str, Any] | None:
    done = out / f".{url}.done"
    try:
        record = json.loads(done.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    tar = out / url
    if record.get("fingerprint") != fp or not tar.is_file() or tar.stat().st_size != record["filesize"]:
        return None
    if not (out / record["dali_index"]).is_file():
        return None
    return record


def _finished(manifest_path: Path, fp: str, overwrite: bool) -> dict[str, Any] | None:
    """The split's manifest when it was written with the same arguments (and not `overwrite`); otherwise it is
    removed, so the split counts as incomplete until the new one lands."""
    if not manifest_path.exists():
        return None
    try:
        old = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        old = {}
    if old.get("fingerprint") == fp and not overwrite:
        return old
    manifest_path.unlink()
    return None


def _remove_stale(out: Path, name: str, split: str, urls: list[str]) -> None:
    """Remove shards of an earlier, larger run (with their index and record) and temporary files."""
    for stale in out.glob(f"{name}-{split}-*.tar"):
        if stale.name not in urls:
            stale.unlink()
            index_path(stale).unlink(missing_ok=True)
            (out / f".{stale.name}.done").unlink(missing_ok=True)
    for tmp in out.glob(f".{name}-{split}-*.tmp*"):
        tmp.unlink(missing_ok=True)


def _counted(progress: Callable[[int], None] | None, record: dict[str, Any]) -> None:
    if progress:
        progress(record["nsamples"] + len(record["skipped"]))


def _plan(
    urls: list[str],
    n: int,
    common: dict[str, Any],
    *,
    shard_size: int,
    overwrite: bool,
    progress: Callable[[int], None] | None,
) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """The records of shards finished earlier with the same arguments, and a task for every other shard."""
    records: dict[int, dict[str, Any]] = {}
    tasks = []
    for k, url in enumerate(urls):
        rec = None if overwrite else _reusable(Path(common["out"]), url, common["fingerprint"])
        if rec is not None:
            records[k] = rec
            _counted(progress, rec)
            continue
        start, stop = k * shard_size, min(n, (k + 1) * shard_size)
        tasks.append({"shard": k, "url": url, "start": start, "stop": stop, **common})
    return records, tasks


def _run(
    source: Source,
    tasks: list[dict[str, Any]],
    workers: int,
    records: dict[int, dict[str, Any]],
    progress: Callable[[int], None] | None,
) -> None:
    """Write the shards of `tasks` into `records`, in `workers` forked processes (in this one when one suffices)."""
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(source)
        for t in tasks:
            records[t["shard"]] = rec = _write_shard(t)
            _counted(progress, rec)
        return
    ctx = mp.get_context("fork")
    with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(source,)) as pool:
        for t, rec in zip(tasks, pool.imap(_write_shard, tasks)):
            records[t["shard"]] = rec
            _counted(progress, rec)


def _manifest(
    source: Source, params: dict[str, Any], fp: str, shardlist: list[dict[str, Any]], started: float
) -> dict[str, Any]:
    """The split's manifest from its shards' records (a wids shard index with the data set's metadata)."""
    name, split, image = params["name"], params["split"], source.kind == "image"
    skipped = [s for r in shardlist for s in r["skipped"]]
    if skipped:
        log.warning("%s/%s: skipped %d bad samples (first: %s: %s)", name, split, len(skipped), *skipped[0])
    repaired = [s for r in shardlist for s in r.get("repaired", [])]
    if repaired:
        log.warning("%s/%s: repaired %d samples (first: %s: %s)", name, split, len(repaired), *repaired[0])
    shapes: Counter = Counter()
    labels: Counter = Counter()
    for r in shardlist:
        for shape, count in r["shapes"]:
            shapes[tuple(shape)] += count
        labels.update({int(k): v for k, v in r["labels"].items()})
    total = sum(r["nsamples"] for r in shardlist)
    if total == 0:
        raise DataError(f"{source.name}/{split}: every sample was bad; nothing written")
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "format": FORMAT_VERSION,
        "name": name,
        "split": split,
        "kind": source.kind,
        "encoding": "jpg" if image else "npy",
        "dtype": "uint8" if image else params["dtype"],
        "num_samples": total,
        "num_classes": source.num_classes,
        "classes": list(source.classes),
        "channels": source.channels,
        "spatial_rank": 2 if image else 3,
        "native_size": list(shapes.most_common(1)[0][0]),
        "fixed_shape": len(shapes) == 1,
        "mean": list(source.mean),
        "std": list(source.std),
        "label_counts": [labels.get(c, 0) for c in range(source.num_classes)],
        "num_skipped": len(skipped),
        "skipped": skipped[:1000],
        "num_repaired": len(repaired),
        "repaired": repaired[:1000],
        "sample_checksums": CHECKSUM_ALGORITHM,
        "params": params,
        "fingerprint": fp,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
        "shardlist": [
            {k: r[k] for k in ("url", "nsamples", "filesize", "sha256", "dali_index", "first_index")}
            for r in shardlist
        ],
    }


def _split_params(source: Source, **args: Any) -> dict[str, Any]:
    """What the split's shards are written from (their fingerprint): the source and the arguments."""
    return {
        "source": source.describe(),
        **args,
        "format": FORMAT_VERSION,
        "checksums": CHECKSUM_ALGORITHM,
        # only where a source asks for it: the other sources' fingerprints (and shards) stay as they were
        **({"subsampling": source.jpeg_subsampling} if source.jpeg_subsampling else {}),
    }


def write_webdataset_split(
    source: Source,
    split: str,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    image_size: int | None = None,
    quality: int = 90,
    dtype: str = "uint8",
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Convert `split` of `source` into shards under `out`; returns the manifest (also written last).

    Resumes: shards recorded as finished with the same arguments are kept; a complete manifest with the
    same arguments returns at once unless `overwrite`.
    """
    name = name or source.name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = source.num_samples(split)
    if n == 0:
        raise DataError(f"{source.name}: split {split!r} has no samples")
    params = _split_params(
        source, name=name, split=split, shard_size=shard_size, image_size=image_size, quality=quality,
        dtype=dtype, skip_bad=skip_bad,
    )  # fmt: skip
    fp = fingerprint(params)
    old = _finished(out / MANIFEST, fp, overwrite)
    if old is not None:
        if progress:
            progress(old.get("num_samples", 0))
        return old
    num_shards = (n + shard_size - 1) // shard_size
    urls = [shard_name(name, split, k) for k in range(num_shards)]
    _remove_stale(out, name, split, urls)
    common = {"out": str(out), "fingerprint": fp, **{k: params[k] for k in _TASK_PARAMS}}
    records, tasks = _plan(urls, n, common, shard_size=shard_size, overwrite=overwrite, progress=progress)
    if tasks:
        log.info(
            "%s/%s: writing %d of %d shards with %d workers", name, split, len(tasks), num_shards, workers
        )
    started = time.time()
    _run(source, tasks, workers, records, progress)
    manifest = _manifest(source, params, fp, [records[k] for k in range(num_shards)], started)
    write_json(out / MANIFEST, manifest)  # last: from now on the split counts as complete
    for url in urls:
        (out / f".{url}.done").unlink(missing_ok=True)
    return manifest
