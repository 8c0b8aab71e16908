"""Random access to the samples of webdataset shards through their DALI index files and mmap.

This is how wids (webdataset's indexed reader) works too; reading the index that the writer already
made keeps opening a split cheap and lets every backend address a sample by its position.

`read(pos)` checks the sample's CRC-32 (shards/checksum.py) before anything decodes it; every failure to read a
sample is a BadSampleError naming the shard file, the sample's key and the split. Shards written before the
checksums existed load unverified, with one warning per split.
"""

from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import BadSampleError, DataError
from pipelines.shards.checksum import MEMBER, sample_crc32
from pipelines.shards.index import read_dali_index, read_dali_index_keys
from pipelines.shards.manifest import MANIFEST, read_manifest, verify_shards

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # splits already warned about as unverified (once per process)
MAX_SUBSTITUTES = 16  # samples of the same shard tried in place of a bad one (bad_samples="skip")


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
        members = self._read_indices(counts)
        offsets, sizes, cls_off, cls_size, idx_off, idx_size, crc_off, crc_size = members
        self.offsets = np.asarray(offsets, np.int64)
        self.sizes = np.asarray(sizes, np.int64)
        self._cls = (np.asarray(cls_off, np.int64), np.asarray(cls_size, np.int64))
        self._idx = (np.asarray(idx_off, np.int64), np.asarray(idx_size, np.int64))
        self._crc = (np.asarray(crc_off, np.int64), np.asarray(crc_size, np.int64))
        self.split = str(self.manifest["split"])
        self.checked = bool(len(self._crc[0])) and bool((self._crc[0] >= 0).all())
        self._keys: dict[int, list[str]] = {}
        if not self.checked and str(self.split_dir) not in _WARNED:
            _WARNED.add(str(self.split_dir))
            log.warning(
                "%s: shards without per-sample checksums (prepared before they existed): samples are decoded "
                "unverified; prepare the split again with --overwrite to add them",
                self.split_dir,
            )
        self._maps: dict[int, mmap.mmap] = {}
        self._pid = os.getpid()
        self._labels: np.ndarray | None = None
        self._indices: np.ndarray | None = None

    def _read_indices(self, counts: list[int]) -> tuple[list[int], ...]:
        """Per sample, offset and size of its payload, `cls`, `idx` and `crc32` members (-1: no checksum)."""
        members: tuple[list[int], ...] = tuple([] for _ in range(8))
        for shard, count in zip(self.manifest["shardlist"], counts):
            path = self.split_dir / shard["dali_index"]
            entries = read_dali_index(path)
            if len(entries) != count:
                raise DataError(f"{path}: {len(entries)} samples, manifest says {count}")
            for e in entries:
                try:
                    parts = (e[self.ext], e["cls"], e["idx"], e.get(MEMBER, (-1, 0)))
                except KeyError as exc:
                    raise DataError(f"{path}: a sample lacks {exc}") from exc
                for k, (off, size) in enumerate(parts):
                    members[2 * k].append(off)
                    members[2 * k + 1].append(size)
        return members

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
        """The encoded sample (JPEG or npy bytes), zero-copy and unverified (read() checks it)."""
        return self._slice(pos, self.offsets, self.sizes)

    def key(self, pos: int) -> str:
        """The sample's key (its tar members' name), read from its shard's index file on demand."""
        shard = self._locate(pos)
        if shard not in self._keys:
            self._keys[shard] = read_dali_index_keys(
                self.split_dir / self.manifest["shardlist"][shard]["dali_index"]
            )
        keys = self._keys[shard]
        local = pos - int(self.starts[shard])
        return keys[local] if local < len(keys) else f"#{local}"

    def bad(self, pos: int, reason: str) -> BadSampleError:
        """The error for sample `pos`: names the shard file, the sample's key and the split."""
        shard = str(self.files[self._locate(pos)])
        key = self.key(pos)
        return BadSampleError(
            f"{shard}: sample {key!r} of split {self.split!r}", reason, shard=shard, key=key, split=self.split
        )

    def read(self, pos: int) -> tuple[memoryview, int, int]:
        """(payload, label, source index) of sample `pos`, its checksum verified; BadSampleError if it is bad."""
        payload = self.payload(pos)
        if len(payload) != self.sizes[pos]:
            raise self.bad(pos, f"{len(payload)} of its {self.sizes[pos]} bytes are in the shard (truncated)")
        cls, idx = bytes(self._slice(pos, *self._cls)), bytes(self._slice(pos, *self._idx))
        if self._crc[0][pos] >= 0:
            stored = bytes(self._slice(pos, *self._crc))
            try:
                want = int(stored, 16)
            except ValueError:
                raise self.bad(pos, f"its checksum member reads {stored[:16]!r} (corrupt shard)") from None
            got = sample_crc32(cls, idx, payload)
            if got != want:
                raise self.bad(pos, f"crc32 {got:08x} differs from the stored {want:08x} (corrupt shard)")
        return payload, self._int(pos, cls, "label"), self._int(pos, idx, "index")

    def _int(self, pos: int, data: bytes, what: str) -> int:
        try:
            return int(data)
        except ValueError:
            raise self.bad(pos, f"its {what} member reads {data[:16]!r}, not an integer") from None

    def neighbours(self, pos: int) -> list[int]:
        """Positions of the same shard after `pos` (wrapping), the deterministic stand-ins for a bad sample."""
        shard = self._locate(pos)
        start, n = int(self.starts[shard]), int(self.starts[shard + 1] - self.starts[shard])
        return [start + (pos - start + k) % n for k in range(1, min(n, MAX_SUBSTITUTES + 1))]

    def label(self, pos: int) -> int:
        return self._int(pos, bytes(self._slice(pos, *self._cls)), "label")

    def index(self, pos: int) -> int:
        return self._int(pos, bytes(self._slice(pos, *self._idx)), "index")

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
