"""UCF101 (Soomro et al. 2012): `UCF-101/{Class}/v_*.avi` and `ucfTrainTestlist/` with the three
official splits; each video becomes `clips_per_video` clips of `frames` RGB frames (PyAV decode),
sampled uniformly over the video (TSN-style segments), shorter side resized and center-cropped to
`size`: stored as (3, T, size, size) uint8."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.errors import BadSampleError, DataError
from pipelines.sources.base import IMAGENET_MEAN, IMAGENET_STD, Sample, Source
from pipelines.sources.registry import register_source


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, *root.glob(f"*/{name}")):
        if candidate.exists():
            return candidate
    raise DataError(f"{root}: no {name} (expected {root}/UCF-101 and {root}/ucfTrainTestlist)")


def decode_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video as (N, H, W, 3) uint8, via PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except Exception as exc:
        raise BadSampleError(str(path), f"cannot decode video ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise BadSampleError(str(path), "video has no frames")
    return np.stack(frames)


def clip_indices(num_frames: int, frames: int, clip: int, clips: int) -> np.ndarray:
    """Frame indices of clip `clip` of `clips`: `frames` evenly spaced points in that segment of the video."""
    start, stop = num_frames * clip / clips, num_frames * (clip + 1) / clips
    step = (stop - start) / frames
    return np.minimum(np.floor(start + step * (np.arange(frames) + 0.5)).astype(int), num_frames - 1)


@register_source
class UCF101(Source):
    name = "ucf101"
    kind = "volume"

    def __init__(
        self,
        src: str | os.PathLike,
        split: int = 1,
        frames: int = 16,
        size: int = 112,
        clips_per_video: int = 1,
    ):
        if split not in (1, 2, 3):
            raise ValueError(f"UCF101 has official splits 1, 2 and 3; got {split}")
        self.src = Path(src)
        self.videos_root = _find(self.src, "UCF-101")
        lists = _find(self.src, "ucfTrainTestlist")
        self.split, self.frames, self.size, self.clips = (
            int(split),
            int(frames),
            int(size),
            int(clips_per_video),
        )
        class_ind = lists / "classInd.txt"
        if not class_ind.is_file():
            raise DataError(f"{class_ind}: missing")
        entries = [line.split() for line in class_ind.read_text().splitlines() if line.strip()]
        self.classes = [name for _, name in sorted(entries, key=lambda e: int(e[0]))]
        index = {c: i for i, c in enumerate(self.classes)}
        self.videos: dict[str, list[tuple[Path, int]]] = {}
        for name, file in (("train", f"trainlist0{split}.txt"), ("val", f"testlist0{split}.txt")):
            path = lists / file
            if not path.is_file():
                raise DataError(f"{path}: missing")
            out = []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                rel = line.split()[0]
                cls = rel.split("/")[0]
                if cls not in index:
                    raise DataError(f"{path}:{n}: class {cls!r} is not in {class_ind}")
                out.append((self.videos_root / rel, index[cls]))
            self.videos[name] = out
        self.channels = 3
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD  # natural RGB frames

    def splits(self) -> list[str]:
        return ["train", "val"]

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return len(self.videos[split]) * self.clips

    def get(self, split: str, index: int) -> Sample:
        path, label = self.videos[split][index // self.clips]
        if not path.is_file():
            raise BadSampleError(str(path), "video listed in the split file is missing")
        video = decode_video(path)
        idx = clip_indices(len(video), self.frames, index % self.clips, self.clips)
        clip = torch.from_numpy(video[idx]).permute(3, 0, 1, 2).float()  # (3, T, H, W)
        h, w = clip.shape[-2:]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        clip = F.interpolate(clip, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        clip = clip[..., top : top + self.size, left : left + self.size]
        return Sample(
            clip.round().clamp(0, 255).to(torch.uint8).numpy(), label, f"{path} clip {index % self.clips}"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "src": str(self.src.resolve()),
            "split": self.split,
            "frames": self.frames,
            "size": self.size,
            "clips": self.clips,
        }
