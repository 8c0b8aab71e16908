"""Per-channel statistics of uint8 data, computed in chunks so large arrays are never copied to float whole."""

from __future__ import annotations

import numpy as np


def channel_stats(
    data: np.ndarray, channel_axis: int, chunk: int = 2048
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per channel in [0, 1] of an (N, ...) uint8 array whose channels are on `channel_axis`."""
    x = np.moveaxis(data, channel_axis, 1) if channel_axis != 1 else data
    c = x.shape[1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, x.shape[0], chunk):
        part = (
            x[start : start + chunk].reshape(min(chunk, x.shape[0] - start), c, -1).astype(np.float64) / 255.0
        )
        total += part.sum(axis=(0, 2))
        total_sq += np.square(part).sum(axis=(0, 2))
        count += part.shape[0] * part.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-6))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
