"""Per-split manifests: written last and atomically, so their presence means "this split is complete".

A manifest is also a valid wids shard index (`__kind__: wids-shard-index-v1`, `shardlist` of
`{url, nsamples}`), so `wids.ShardListDataset(manifest_path)` can read the shards too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from pipelines.errors import DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """Short stable hash of the JSON form of `obj` (the arguments that determine an output)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read a manifest, raising DataError naming the path when it is missing or not a complete manifest."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no manifest; the split was never prepared or its preparation did not finish "
            "(run launch/prepare_data.py again: it resumes)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    for key in ("name", "split", "num_samples", "classes", "kind"):
        if key not in manifest:
            raise DataError(f"{path}: manifest lacks the key {key!r}")
    return manifest


def verify_shards(split_dir: str | os.PathLike, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Check that every shard of a manifest exists with its recorded size (and sha256 when asked)."""
    split_dir = Path(split_dir)
    for shard in manifest.get("shardlist", []):
        path = split_dir / shard["url"]
        if not path.is_file():
            raise DataError(f"{path}: shard listed in {split_dir / MANIFEST} is missing")
        size = path.stat().st_size
        if size != shard["filesize"]:
            raise DataError(
                f"{path}: {size} bytes, the manifest says {shard['filesize']} (truncated or replaced?)"
            )
        if checksums and sha256_file(path) != shard["sha256"]:
            raise DataError(f"{path}: sha256 differs from the manifest (corrupt or replaced)")


def read_manifest_url(url: str | os.PathLike) -> dict[str, Any]:
    """A manifest from a local path or any URL webdataset opens (`pipe:` commands, http(s), ...), through the
    same scheme as the shards beside it; DataError naming the URL when it cannot be read."""
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", str(url)) or os.path.exists(url):
        return read_manifest(url)
    from webdataset.gopen import gopen

    try:
        with gopen(str(url), "rb") as f:
            manifest = json.loads(f.read())
    except Exception as exc:  # gopen raises OSError, IOError or a pipe's exit status
        raise DataError(f"{url}: cannot read the manifest through webdataset's gopen ({exc})") from exc
    for key in ("name", "split", "num_samples", "classes", "kind", "shardlist"):
        if key not in manifest:
            raise DataError(f"{url}: manifest lacks the key {key!r}")
    return manifest
