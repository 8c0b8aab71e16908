"""Per-sample checksums: a CRC-32 of each sample's stored bytes, written with the sample and checked before
it is decoded, so a flipped byte in a shard or .beton is a named bad sample rather than silently altered data.

CRC-32 (zlib, in the standard library) detects every error burst up to 32 bits and any other change with
probability 1 - 2^-32; `benchmarks/shard_checksums.py` measures what checking it costs a loader.
Webdataset shards hold it as the member `{key}.crc32` (8 hex digits) over the label, index and payload; an
FFCV .beton has a sidecar `{split}.crc32.npy` over each sample's metadata row and data regions.
"""

from __future__ import annotations

import zlib

ALGORITHM = "crc32"
MEMBER = "crc32"  # the tar member extension of a sample's checksum


def sample_crc32(label: bytes, index: bytes, payload: bytes | memoryview) -> int:
    """The checksum of one webdataset sample: its `cls` and `idx` members, then its payload."""
    return zlib.crc32(payload, zlib.crc32(bytes(label) + b"\0" + bytes(index) + b"\0"))


def encode_crc32(value: int) -> bytes:
    return f"{value:08x}".encode()
