"""Shard names and the DALI index file beside each tar (the format of DALI's `wds2idx`).

Per sample the index lists `ext offset size name` for each member; the reader addresses samples
through it and users' own DALI readers can pass it to `fn.readers.webdataset(index_paths=...)`.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from pipelines.errors import DataError

DALI_INDEX_VERSION = "v1.2"


def shard_name(name: str, split: str, index: int) -> str:
    return f"{name}-{split}-{index:06d}.tar"


def index_path(tar_path: str | os.PathLike) -> Path:
    """The DALI index file of a shard: the tar's name with `.idx` for `.tar`."""
    return Path(tar_path).with_suffix(".idx")


def dali_index_lines(tar_path: str | os.PathLike) -> list[str]:
    """Lines of a DALI webdataset index (the format of DALI's `wds2idx`): per sample, `ext offset size name`."""
    samples: list[list[tuple[str, int, int, str]]] = []
    last = None
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base, _, ext = member.name.partition(".")
            if base != last:
                samples.append([])
                last = base
            samples[-1].append((ext, member.offset_data, member.size, member.name))
    lines = [f"{DALI_INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{e} {o} {s} {n}" for e, o, s, n in parts) for parts in samples]
    return lines


def read_dali_index(path: str | os.PathLike) -> list[dict[str, tuple[int, int]]]:
    """Parse a DALI index file into, per sample, {ext: (offset, size)}."""
    with open(path) as f:
        header = f.readline().split()
        if len(header) != 2 or not header[0].startswith("v1"):
            raise DataError(f"{path}: not a DALI webdataset index (header {header})")
        out = []
        for number, line in enumerate(f, start=2):
            parts = line.split()
            try:
                out.append(
                    {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}
                )
            except (ValueError, IndexError) as exc:
                raise DataError(
                    f"{path}: line {number} is not `ext offset size name ...` (corrupt index)"
                ) from exc
    if len(out) != int(header[1]):
        raise DataError(f"{path}: index says {header[1]} samples but lists {len(out)} (truncated?)")
    return out


def read_dali_index_keys(path: str | os.PathLike) -> list[str]:
    """The sample keys of a DALI index file, in order (the member names without their extension)."""
    with open(path) as f:
        f.readline()
        return [line.split()[3].partition(".")[0] if len(line.split()) >= 4 else "?" for line in f]
