"""Write one split as an FFCV .beton, converted from the split's webdataset shards (so both hold the same
samples): fields `image` (RGBImageField) or `volume` (NDArrayField, fixed shape), `label`, `index`.

The .beton is written under a temporary name and renamed; then `{split}.crc32.npy`, the CRC-32 of every
sample's stored bytes (shards/beton.py, checked by the FFCV loader); `{split}.json` beside them is written last.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import DataError
from pipelines.shards import CHECKSUM_ALGORITHM, ShardReader, decode_npy, fingerprint, sha256_file, write_json
from pipelines.shards.beton import BetonChecksums, checksum_path


class _ShardsAsArrays:
    """Indexed dataset for FFCV's writer: position -> (HxWx3 uint8 image | volume array, label, index)."""

    def __init__(self, split_dir: Path):
        self.reader = ShardReader(split_dir)
        self.kind = self.reader.manifest["kind"]
        # numba (FFCV's compiler) has no float16: such volumes are stored as their uint16 bit patterns
        self.bits16 = self.reader.manifest["dtype"] == "float16"

    def __len__(self) -> int:
        return len(self.reader)

    def check(self) -> None:
        """Read every sample here, before FFCV's writer processes do (an error raised in one of those leaves
        FFCV's writer waiting forever): checksums where the shards have them, else a full decode."""
        for pos in range(len(self)):
            if self.reader.checked:
                self.reader.read(pos)
            else:
                self[pos]

    def __getitem__(self, pos: int) -> tuple[np.ndarray, int, int]:
        data, label, index = self.reader.read(
            pos
        )  # checksum verified: a corrupt shard is named, not converted
        try:
            if self.kind == "image":
                from PIL import Image

                # gray is stored as 3 equal channels
                img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            else:
                img = decode_npy(data)
                if self.bits16:
                    img = img.view(np.uint16)
        except Exception as exc:
            raise self.reader.bad(pos, f"cannot decode it ({type(exc).__name__}: {exc})") from exc
        return img, label, index


def default_write_mode(native_size: list[int]) -> str:
    """Raw pixels for small images (decoding costs more than reading them), JPEG above 64 px."""
    return "raw" if max(native_size) <= 64 else "jpg"


def _page_size(dataset: _ShardsAsArrays, mode: str) -> int:
    """FFCV page: a power of two from 2 MiB holding >= 4 of the largest samples. Each writer process fills
    its own pages, so FFCV's default 8 MiB made a 360-image 32 px split 17 MB; small sets now stay small."""
    from ffcv.writer import MIN_PAGE_SIZE

    m = dataset.reader.manifest
    if m["kind"] == "volume":
        largest = int(np.prod([m["channels"], *m["native_size"]])) * np.dtype(m["dtype"]).itemsize
    elif mode == "raw":
        largest = 64 * 64 * 3 if max(m["native_size"]) <= 64 else int(dataset.reader.sizes.max()) * 16
    else:
        # re-encoded JPEG; generous against a worse source quality
        largest = int(dataset.reader.sizes.max()) * 4
    page = MIN_PAGE_SIZE
    while page < 4 * largest:
        page *= 2
    return page


def _finished(manifest_path: Path, beton: Path, fp: str, overwrite: bool) -> dict[str, Any] | None:
    """The FFCV manifest when its .beton was written with the same arguments and is whole (and not `overwrite`);
    otherwise the manifest is removed, so the .beton counts as incomplete until the new one lands."""
    if manifest_path.exists() and not overwrite:
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") == fp and beton.is_file() and beton.stat().st_size == old.get("filesize"):
            return old
    manifest_path.unlink(missing_ok=True)
    return None


def _fields(dataset: _ShardsAsArrays, mode: str, quality: int, max_resolution: int | None) -> dict[str, Any]:
    """The .beton's fields: `image` (RGBImageField) or `volume` (NDArrayField of the split's one shape), `label`,
    `index`."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    wds = dataset.reader.manifest
    if wds["kind"] == "image":
        main = ("image", RGBImageField(write_mode=mode, max_resolution=max_resolution, jpeg_quality=quality))
    else:
        if not wds["fixed_shape"]:
            raise DataError(
                f"{dataset.reader.split_dir}: volumes of different shapes; FFCV needs one fixed shape per split"
            )
        shape = (wds["channels"], *wds["native_size"])
        stored = np.dtype("uint16") if dataset.bits16 else np.dtype(wds["dtype"])
        main = ("volume", NDArrayField(dtype=stored, shape=shape))
    return dict([main, ("label", IntField()), ("index", IntField())])


def _write_beton(
    dataset: _ShardsAsArrays, beton: Path, fields: dict[str, Any], mode: str, workers: int
) -> None:
    """Write the .beton under a temporary name and rename it into place."""
    from ffcv.writer import DatasetWriter

    page_size = _page_size(dataset, mode)
    beton.parent.mkdir(parents=True, exist_ok=True)
    tmp = beton.with_name(f".{beton.name}.tmp{os.getpid()}")
    try:
        writer = DatasetWriter(str(tmp), fields, page_size=page_size, num_workers=max(1, workers))
        writer.from_indexed_dataset(dataset, chunksize=100)
        os.replace(tmp, beton)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_checksums(beton: Path) -> Path:
    """The sidecar of per-sample CRC-32s of the finished .beton (under a temporary name, then renamed)."""
    path = checksum_path(beton)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, BetonChecksums(beton).all(), allow_pickle=False)
    os.replace(tmp, path)
    return path


def _manifest(
    wds: dict[str, Any], beton: Path, fields: dict[str, Any], params: dict[str, Any], fp: str
) -> dict[str, Any]:
    """The FFCV manifest: the webdataset manifest's metadata plus the .beton's file, checksum and settings."""
    keys = (
        "name",
        "split",
        "kind",
        "num_samples",
        "num_classes",
        "classes",
        "channels",
        "spatial_rank",
        "native_size",
        "fixed_shape",
        "mean",
        "std",
        "dtype",
        "label_counts",
        "num_skipped",
    )
    manifest = {k: wds[k] for k in keys}
    manifest.update(
        {
            "format": "ffcv",
            "file": beton.name,
            "filesize": beton.stat().st_size,
            "sha256": sha256_file(beton),
            "fields": list(fields),
            "sample_checksums": {
                "algorithm": CHECKSUM_ALGORITHM,
                "file": checksum_path(beton).name,
                "sha256": sha256_file(checksum_path(beton)),
            },
            "write_mode": params["mode"],
            "jpeg_quality": params["quality"],
            "max_resolution": params["max_resolution"],
            "params": params,
            "fingerprint": fp,
        }
    )
    return manifest


def write_ffcv_split(
    split_dir: str | os.PathLike,
    beton: str | os.PathLike,
    manifest_path: str | os.PathLike,
    *,
    workers: int = 1,
    quality: int = 90,
    max_resolution: int | None = None,
    write_mode: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Convert the prepared webdataset split in `split_dir` into `beton`; returns the FFCV manifest."""
    import ffcv  # noqa: F401  (fail here, clearly, when FFCV is not installed)

    split_dir, beton, manifest_path = Path(split_dir), Path(beton), Path(manifest_path)
    dataset = _ShardsAsArrays(split_dir)
    wds = dataset.reader.manifest
    mode = write_mode or default_write_mode(wds["native_size"])
    params = {
        "webdataset": wds["fingerprint"],
        "quality": quality,
        "max_resolution": max_resolution,
        "mode": mode,
        "checksums": CHECKSUM_ALGORITHM,
    }
    fp = fingerprint(params)
    manifest = _finished(manifest_path, beton, fp, overwrite)
    if manifest is None:
        fields = _fields(dataset, mode, quality, max_resolution)
        dataset.check()
        _write_beton(dataset, beton, fields, mode, workers)
        _write_checksums(beton)
        manifest = _manifest(wds, beton, fields, params, fp)
        write_json(manifest_path, manifest)
    if progress:
        progress(manifest["num_samples"])
    return manifest
