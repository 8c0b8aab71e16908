"""The source interface: random access to the samples of a data set in the layout users already have.

Random access (`get(split, index)`) lets the writers convert shards in parallel processes and
resume after an interruption; every source is deterministic for the same arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# ImageNet channel statistics (RGB, pixel values in [0, 1]), as published with the torchvision
# reference training scripts (pytorch/vision, references/classification) and used since AlexNet-era ports.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Sample:
    """One sample: encoded JPEG bytes or a uint8 HWC/HW array for images, a (C, D, H, W) array for volumes."""

    data: bytes | np.ndarray
    label: int
    origin: str  # where it came from (file, archive entry), for error messages
    repaired: str | None = (
        None  # what the source fixed in it (e.g. NaN voxels mapped to background), if anything
    )


class Source:
    """Base class: a named data set with splits, classes and per-channel statistics (pixels in [0, 1])."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "image"  # "image" (2D, stored as JPEG) or "volume" (3D/video, stored as npy)
    needs_src: ClassVar[bool] = True
    # JPEG chroma subsampling of the shards: None is the encoder's default, 4:2:0 (colour at half
    # resolution: right for photographs); "4:4:4" keeps colour at every pixel, for images whose
    # signal is small coloured detail (compass2d's 2-pixel red and green marks)
    jpeg_subsampling: ClassVar[str | None] = None

    classes: list[str]
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def splits(self) -> list[str]:
        """Names of the splits this source provides, e.g. ["train", "val"]."""
        raise NotImplementedError

    def num_samples(self, split: str) -> int:
        """Number of samples in `split` (before any skipped bad ones)."""
        raise NotImplementedError

    def get(self, split: str, index: int) -> Sample:
        """Sample `index` of `split`; raises BadSampleError naming the file when it cannot be read."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The arguments that determine the samples (part of the output fingerprint)."""
        return {"source": self.name}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _check_split(self, split: str) -> None:
        from pipelines.errors import DataError

        if split not in self.splits():
            raise DataError(f"{self.name}: unknown split {split!r}; this source has {self.splits()}")
