"""The on-disk format of a prepared split, shared by the writers (which make it) and the loaders (which read it).

    manifest.py  `manifest.json` (also a wids shard index), atomic JSON writes, checksums, fingerprints
    index.py     shard names and the DALI index file beside each tar
    codec.py     a sample's stored bytes: JPEG for images, npy for volumes
    checksum.py  per-sample CRC-32s, written with each sample and verified before it is decoded
    reader.py    ShardReader: position -> (payload, label, source index) through the index files and mmap

Writers and loaders import this package, never each other.
"""

from __future__ import annotations

from pipelines.shards.checksum import ALGORITHM as CHECKSUM_ALGORITHM
from pipelines.shards.checksum import MEMBER as CHECKSUM_MEMBER
from pipelines.shards.checksum import encode_crc32, sample_crc32
from pipelines.shards.codec import decode_npy, encode_image, encode_volume
from pipelines.shards.index import (
    DALI_INDEX_VERSION,
    dali_index_lines,
    index_path,
    read_dali_index,
    shard_name,
)
from pipelines.shards.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    atomic_write_text,
    fingerprint,
    read_manifest,
    sha256_file,
    verify_shards,
    write_json,
)
from pipelines.shards.reader import ShardReader

__all__ = [
    "CHECKSUM_ALGORITHM",
    "CHECKSUM_MEMBER",
    "DALI_INDEX_VERSION",
    "FORMAT_VERSION",
    "MANIFEST",
    "ShardReader",
    "atomic_write_text",
    "dali_index_lines",
    "decode_npy",
    "encode_crc32",
    "encode_image",
    "encode_volume",
    "fingerprint",
    "index_path",
    "read_dali_index",
    "read_manifest",
    "sample_crc32",
    "sha256_file",
    "shard_name",
    "verify_shards",
    "write_json",
]
