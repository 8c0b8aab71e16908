"""Embedded data sets that need no download: real handwritten digits and generated "compass" sets.

`digits` is scikit-learn's bundled copy of the UCI optical handwritten digits (1797 8x8 images,
Alpaydin & Kaynak 1998). `compass2d`/`compass3d` draw an anchor mark and a target mark; the label is
the direction of the target seen from the anchor, so it depends only on their relative position,
while the pair is placed uniformly at random wherever it fits (absolute position is drawn
independently of the label). Every sample is a pure function of (seed, split, index).

Every set also holds **extent** splits, ``val-extent<S>``: validation sample i of ``val`` on a
larger S-pixel canvas at the training scale. In the compass sets it has the same label, direction
and distance, drawn from the same random stream: marks and distances keep their pixel sizes, the
pair is placed anywhere on the canvas, the noise background covers all of it. In `digits` the
digit, at the set's own size, lands at a random place (a pure function of its index) on a black
canvas, the digits' own background. Evaluating there asks whether a model handles more tokens of
the same kind of scene; resizing ``val`` to S asks about a zoomed scene (the marks and strokes grow
with it). docs/results.md reports both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.sources.base import Sample, Source
from pipelines.sources.registry import register_source

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
EXTENT = "-extent"


def extent_split(split: str, size: int) -> str:
    """The name of ``split`` drawn on a ``size``-pixel canvas at the training scale."""
    return f"{split}{EXTENT}{int(size)}"


def _stats(arrays: list[np.ndarray], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 arrays in [0, 1]; channel axis last for images, first for volumes."""
    x = np.stack(arrays).astype(np.float64) / 255.0
    axis = -1 if x.ndim == 4 and x.shape[-1] == channels else 1
    x = np.moveaxis(x, axis, 0).reshape(channels, -1)
    std = np.maximum(x.std(axis=1), 1e-3)
    return tuple(float(v) for v in x.mean(axis=1)), tuple(float(v) for v in std)


class _ExtentSplits:
    """``val-extent<S>`` splits beside train and val; S defaults to 1.5x and 2x the size, the
    evaluation sizes of the configs."""

    draws_extent = True  # holds val-extent<S> splits (eval.protocols: extent)
    size: int
    name: str

    def _init_extent(self, extent_sizes) -> None:
        extent_sizes = (self.size * 3 // 2, self.size * 2) if extent_sizes is None else extent_sizes
        self.extent_sizes = tuple(int(e) for e in extent_sizes)
        if any(e <= self.size for e in self.extent_sizes):
            raise ValueError(
                f"{self.name}: extent sizes {self.extent_sizes} must exceed the size {self.size}"
            )

    def splits(self) -> list[str]:
        return ["train", "val", *(extent_split("val", e) for e in self.extent_sizes)]

    def _base(self, split: str) -> tuple[str, int]:
        """``val-extent64`` -> ("val", 64); any other split -> (split, the set's own size)."""
        if EXTENT in split:
            base, size = split.split(EXTENT)
            return base, int(size)
        return split, self.size


@register_source
class Digits(_ExtentSplits, Source):
    """scikit-learn's handwritten digits, 10 classes; every 5th image is `val`; upsampled to `size`."""

    name = "digits"
    kind = "image"
    needs_src = False
    revision = 1  # 1: the extent splits (data prepared before is prepared again, adding them)

    def __init__(self, size: int = 32, extent_sizes=None):
        from sklearn.datasets import load_digits  # bundled with scikit-learn, read from its package data

        data = load_digits()
        self.size = int(size)
        self._images = np.clip(np.round(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (N, 8, 8)
        self._labels = data.target.astype(np.int64)
        idx = np.arange(len(self._labels))
        self._index = {"train": idx[idx % 5 != 0], "val": idx[idx % 5 == 0]}
        self.classes = [str(d) for d in range(10)]
        self.channels = 1
        self.mean, self.std = _stats([self._images[i][..., None] for i in self._index["train"]], 1)
        self._init_extent(extent_sizes)

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return len(self._index[self._base(split)[0]])

    def get(self, split: str, index: int) -> Sample:
        from PIL import Image

        self._check_split(split)
        base, canvas = self._base(split)
        i = int(self._index[base][index])
        img = Image.fromarray(self._images[i], mode="L")
        if self.size != 8:
            img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
        digit = np.asarray(img)
        if canvas != self.size:  # extent: the digit at the set's size, anywhere on a black canvas
            rng = np.random.default_rng([_SPLIT_CODE[base], int(index), canvas])
            r, c = rng.integers(0, canvas - self.size + 1, size=2)
            out = np.zeros((canvas, canvas), np.uint8)
            out[r : r + self.size, c : c + self.size] = digit
            digit = out
        return Sample(digit, int(self._labels[i]), f"sklearn digits #{i}")

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "size": self.size}


class _Compass(_ExtentSplits, Source):
    """Shared placement logic of the compass sets: a displacement per label, a uniform placement."""

    needs_src = False
    ndim = 2
    mark_values: tuple[tuple[int, ...], tuple[int, ...]]  # per channel: the "from" mark, the "to" mark
    mark_div = 16  # a mark's side is size / mark_div pixels (at least 1)

    revision = 1  # 1: the extent splits (data prepared before is prepared again, adding them)

    def __init__(self, size: int, num_train: int, num_val: int, seed: int = 0, extent_sizes=None):
        self.size = int(size)
        if self.size < 8:
            raise ValueError(f"{self.name}: size must be at least 8, got {self.size}")
        self.seed = int(seed)
        self._counts = {"train": int(num_train), "val": int(num_val)}
        self._init_extent(extent_sizes)
        self.mark = max(1, self.size // self.mark_div)
        sample = [self.get("train", i).data for i in range(min(64, self._counts["train"]))]
        self.mean, self.std = _stats(sample, self.channels)

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return self._counts[self._base(split)[0]]

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "size": self.size, "seed": self.seed, "counts": self._counts}

    def _rng(self, split: str, index: int) -> np.random.Generator:
        """An extent split draws from its base split's stream: the same label and displacement."""
        return np.random.default_rng([self.seed, _SPLIT_CODE.get(self._base(split)[0], 9), int(index)])

    def _place(
        self, rng: np.random.Generator, disp: np.ndarray, canvas: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uniform anchor position such that anchor and anchor + disp both fit on the canvas."""
        m = self.mark
        lo = np.maximum(0, -disp)
        hi = canvas - m - np.maximum(0, disp)  # inclusive upper bound for the anchor corner
        anchor = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
        return anchor, anchor + disp


@register_source
class Compass2D(_Compass):
    """RGB images; label = one of 8 compass directions (E, NE, N, ... SE) from the red to the green mark."""

    name = "compass2d"
    kind = "image"
    ndim = 2
    mark_values = ((255, 40, 40), (40, 255, 40))  # the red (from) and the green (to) mark
    # Revision 2: shards keep colour at every pixel. Until then JPEG's default 4:2:0 chroma subsampling
    # averaged each 2 x 2 block's colour: a red mark read back as (164, 77, 88) on average, its colour
    # bled into the neighbouring pixels (and patches), and the engine trained on that, not on the
    # marks the generator draws (docs/results.md, "Why LieRE stalls").
    jpeg_subsampling = "4:4:4"
    revision = 2

    def __init__(
        self, size: int = 32, num_train: int = 4000, num_val: int = 1000, seed: int = 0, extent_sizes=None
    ):
        self.classes = ["E", "NE", "N", "NW", "W", "SW", "S", "SE"]
        self.channels = 3
        super().__init__(size, num_train, num_val, seed, extent_sizes)

    def get(self, split: str, index: int) -> Sample:
        self._check_split(split)
        rng = self._rng(split, index)
        label = int(rng.integers(0, 8))
        m, s = self.mark, self.size
        canvas = self._base(split)[1]
        # angle inside the label's 45 degree sector, 7.5 degrees away from its borders
        angle = np.deg2rad(label * 45.0 + rng.uniform(-15.0, 15.0))
        length = rng.uniform(0.25, 0.6) * (s - m)
        # image rows grow downwards: "north" is a negative row displacement
        disp = np.round([-length * np.sin(angle), length * np.cos(angle)]).astype(int)
        a, t = self._place(rng, disp, canvas)
        img = rng.integers(0, 24, size=(canvas, canvas, 3), dtype=np.uint8)  # faint noise background
        img[a[0] : a[0] + m, a[1] : a[1] + m] = self.mark_values[0]
        img[t[0] : t[0] + m, t[1] : t[1] + m] = self.mark_values[1]
        return Sample(img, label, f"{self.name} seed={self.seed} {split}#{index}")


@register_source
class Compass3D(_Compass):
    """One-channel volumes; label = dominant axis and sign (+x, -x, +y, -y, +z, -z) from bright to dark mark.

    Revision 2 (docs/results.md, "compass3d"), three changes, each measured:
    - the marks sit on mid-grey noise, one brighter (255) and one darker (0): normalised, they point
      in opposite directions, which a linear patch embedding followed by LayerNorm keeps apart.
      Revision 1's bright (255) and dim (128) marks on black differ only in magnitude, which
      LayerNorm removes: their first-layer tokens had a cosine of 0.976 at initialisation (compass2d's
      red and green: 0.317; `benchmarks/mark_contrast.py`);
    - a mark is a cube of side size/8 (2 voxels at 16^3: 8 of a 4^3 patch's 64 voxels, where
      compass2d's 2 x 2 marks fill 4 of an 8 x 8 patch's 64 pixels), not one voxel: with one voxel
      RoPE-Mixed stayed at chance for 1488 steps even on 8000 volumes;
    - 8000 training volumes, not 2000: on 2000 the training loss fell below 0.9 while validation stayed
      at chance (the noise was memorised).
    """

    name = "compass3d"
    kind = "volume"
    ndim = 3
    revision = 2  # 2: bright and dark 2-voxel marks on mid grey, 8000 train (1: the extent splits)
    mark_values = ((255,), (0,))  # the bright (from) and the dark (to) mark
    mark_div = 8

    def __init__(
        self, size: int = 16, num_train: int = 8000, num_val: int = 500, seed: int = 0, extent_sizes=None
    ):
        self.classes = ["+x", "-x", "+y", "-y", "+z", "-z"]
        self.channels = 1
        super().__init__(size, num_train, num_val, seed, extent_sizes)

    def get(self, split: str, index: int) -> Sample:
        self._check_split(split)
        rng = self._rng(split, index)
        label = int(rng.integers(0, 6))
        m, s = self.mark, self.size
        canvas = self._base(split)[1]
        axis = {0: 2, 1: 2, 2: 1, 3: 1, 4: 0, 5: 0}[label]  # array axes are (z, y, x)
        sign = 1 if label % 2 == 0 else -1
        main = rng.uniform(0.3, 0.6) * (s - m)
        disp = rng.uniform(-0.45, 0.45, size=3) * main  # off-axis parts stay well below the main one
        disp[axis] = sign * main
        disp = np.round(disp).astype(int)
        a, t = self._place(rng, disp, canvas)
        vol = rng.integers(116, 141, size=(1, canvas, canvas, canvas), dtype=np.uint8)  # mid-grey noise
        vol[0, a[0] : a[0] + m, a[1] : a[1] + m, a[2] : a[2] + m] = self.mark_values[0][0]
        vol[0, t[0] : t[0] + m, t[1] : t[1] + m, t[2] : t[2] + m] = self.mark_values[1][0]
        return Sample(vol, label, f"{self.name} seed={self.seed} {split}#{index}")
