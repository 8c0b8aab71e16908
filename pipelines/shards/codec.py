"""A sample's stored bytes: a source Sample encoded as JPEG (images) or npy (volumes), and npy decoded back.

Encoding is deterministic, so the webdataset and FFCV outputs of one split hold the same pixels.
"""

from __future__ import annotations

import io

import numpy as np

from pipelines.errors import BadSampleError
from pipelines.sources.base import Sample


def _open_image(sample: Sample):
    from PIL import Image

    if isinstance(sample.data, np.ndarray):
        arr = sample.data
        if arr.dtype != np.uint8:
            raise BadSampleError(sample.origin, f"image array has dtype {arr.dtype}, expected uint8")
        return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr), False
    try:
        img = Image.open(io.BytesIO(sample.data))
        fmt = img.format
        img.load()  # full decode: catches truncated and corrupt files here rather than at training time
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise BadSampleError(sample.origin, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    return img, fmt == "JPEG"


def encode_image(
    sample: Sample, channels: int, image_size: int | None, quality: int, subsampling: str | None = None
) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of the sample with its shorter side resized down to `image_size` (never up), with
    chroma `subsampling` ("4:4:4", "4:2:2", "4:2:0"; None: the encoder's default, 4:2:0).

    JPEG inputs that need no resize and have the right mode are passed through byte for byte.
    """
    from PIL import Image

    img, is_jpeg = _open_image(sample)
    mode = "L" if channels == 1 else "RGB"
    w, h = img.size
    resize = image_size is not None and min(w, h) > image_size
    if is_jpeg and not resize and img.mode == mode and not isinstance(sample.data, np.ndarray):
        return bytes(sample.data), (h, w)
    if img.mode != mode:
        img = img.convert(mode)
    if resize:
        scale = image_size / min(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    options = {} if subsampling is None else {"subsampling": subsampling}
    img.save(buf, format="JPEG", quality=int(quality), **options)
    return buf.getvalue(), (h, w)


def encode_volume(sample: Sample, channels: int, dtype: str = "uint8") -> tuple[bytes, tuple[int, ...]]:
    """npy bytes of a channels-first volume (C, D, H, W) in uint8 or float16."""
    arr = sample.data
    if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.shape[0] != channels:
        shape = getattr(arr, "shape", type(arr).__name__)
        raise BadSampleError(sample.origin, f"volume has shape {shape}, expected ({channels}, D, H, W)")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise BadSampleError(sample.origin, "volume holds NaN or infinite values")
    arr = np.ascontiguousarray(arr.astype(dtype, copy=False))
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue(), tuple(int(v) for v in arr.shape[1:])


def decode_npy(data: bytes | memoryview) -> np.ndarray:
    """Inverse of encode_volume (no pickles allowed)."""
    return np.load(io.BytesIO(data), allow_pickle=False)
