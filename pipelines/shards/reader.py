"""Random access to the samples of webdataset shards through their DALI index files and mmap.

This is how wids (webdataset's indexed reader) works too; reading the index that the writer already
made keeps opening a split cheap and lets every backend address a sample by its position.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import DataError
from pipelines.shards.index import read_dali_index
from pipelines.shards.manifest import MANIFEST, read_manifest, verify_shards


class ShardReader:
    """Position -> (payload bytes, label, source index) for one prepared split."""

    def __init__(self, split_dir: str | os.PathLike, verify: bool = False):
        self.split_dir = Path(split_dir)
        self.manifest: dict[str, Any] = read_manifest(self.split_dir / MANIFEST)
        verify_shards(self.split_dir, self.manifest, checksums=verify)
        self.ext = self.manifest["encoding"]
        self.files = [self.split_dir / s["url"] for s in self.manifest["shardlist"]]
        counts = [s["nsamples"] for s in self.manifest["shardlist"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        offsets, sizes, cls_off, cls_size, idx_off, idx_size = ([] for _ in range(6))
        for shard, count in zip(self.manifest["shardlist"], counts):
            entries = read_dali_index(self.split_dir / shard["dali_index"])
            if len(entries) != count:
                raise DataError(
                    f"{self.split_dir / shard['dali_index']}: {len(entries)} samples, manifest says {count}"
                )
            for e in entries:
                try:
                    offsets.append(e[self.ext][0])
                    sizes.append(e[self.ext][1])
                    cls_off.append(e["cls"][0])
                    cls_size.append(e["cls"][1])
                    idx_off.append(e["idx"][0])
                    idx_size.append(e["idx"][1])
                except KeyError as exc:
                    raise DataError(f"{self.split_dir / shard['dali_index']}: a sample lacks {exc}") from exc
        self.offsets = np.asarray(offsets, np.int64)
        self.sizes = np.asarray(sizes, np.int64)
        self._cls = (np.asarray(cls_off, np.int64), np.asarray(cls_size, np.int64))
        self._idx = (np.asarray(idx_off, np.int64), np.asarray(idx_size, np.int64))
        self._maps: dict[int, mmap.mmap] = {}
        self._pid = os.getpid()
        self._labels: np.ndarray | None = None
        self._indices: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _map(self, shard: int) -> mmap.mmap:
        if self._pid != os.getpid():  # a forked worker opens its own maps
            self._maps, self._pid = {}, os.getpid()
        m = self._maps.get(shard)
        if m is None:
            with open(self.files[shard], "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[shard] = m
        return m

    def _locate(self, pos: int) -> int:
        if not 0 <= pos < len(self):
            raise IndexError(f"position {pos} outside the split's {len(self)} samples")
        return int(np.searchsorted(self.starts, pos, side="right") - 1)

    def _slice(self, pos: int, offsets: np.ndarray, sizes: np.ndarray) -> memoryview:
        m = self._map(self._locate(pos))
        off, size = int(offsets[pos]), int(sizes[pos])
        return memoryview(m)[off : off + size]

    def payload(self, pos: int) -> memoryview:
        """The encoded sample (JPEG or npy bytes), zero-copy."""
        return self._slice(pos, self.offsets, self.sizes)

    def label(self, pos: int) -> int:
        return int(bytes(self._slice(pos, *self._cls)))

    def index(self, pos: int) -> int:
        return int(bytes(self._slice(pos, *self._idx)))

    def labels(self) -> np.ndarray:
        """All labels in position order (read once, cached)."""
        if self._labels is None:
            self._labels = np.array([self.label(p) for p in range(len(self))], np.int64)
        return self._labels

    def indices(self) -> np.ndarray:
        """All source indices in position order (read once, cached)."""
        if self._indices is None:
            self._indices = np.array([self.index(p) for p in range(len(self))], np.int64)
        return self._indices
