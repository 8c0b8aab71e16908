"""Per-sample checksums of an FFCV .beton: the CRC-32 of each sample's metadata row (labels, indices, image
headers) and of its data regions (JPEG or raw pixels, arrays), in the file's own layout (ffcv/reader.py).

The writer stores them in a sidecar `{split}.crc32.npy`; the FFCV loader recomputes them from the file for
the samples of each batch, in Python beside FFCV's compiled reader (which cannot be told to check them), and
compares before the batch is handed out.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np


def checksum_path(beton: str | os.PathLike) -> Path:
    """The sidecar of a .beton: `{split}.crc32.npy` beside `{split}.beton`."""
    beton = Path(beton)
    return beton.with_name(f"{beton.stem}.crc32.npy")


class BetonChecksums:
    """Position -> CRC-32 of that sample's stored bytes in a .beton (memory-mapped, read-only)."""

    def __init__(self, beton: str | os.PathLike):
        from ffcv.reader import Reader

        reader = Reader(str(beton))
        self.num_samples = int(reader.num_samples)
        self.metadata = reader.metadata
        table = np.sort(reader.alloc_table, order=["sample_id", "ptr"])
        self.ptr, self.size = table["ptr"].astype(np.int64), table["size"].astype(np.int64)
        self.bounds = np.searchsorted(table["sample_id"], np.arange(self.num_samples + 1, dtype=np.uint64))
        self.map = np.memmap(beton, dtype=np.uint8, mode="r")

    def crc(self, pos: int) -> int:
        value = zlib.crc32(self.metadata[pos].tobytes())
        for k in range(int(self.bounds[pos]), int(self.bounds[pos + 1])):
            value = zlib.crc32(self.map[self.ptr[k] : self.ptr[k] + self.size[k]], value)
        return value

    def all(self) -> np.ndarray:
        return np.array([self.crc(p) for p in range(self.num_samples)], dtype=np.uint32)
