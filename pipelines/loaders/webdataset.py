"""The webdataset backend: reads the tar shards by position (mmap + index), decodes with PIL (2D) or
numpy (3D) in torch DataLoader worker processes, and applies transforms.py's augmentations (and
randaugment.py's RandAugment, then 3-Augment / colour jitter, on 2D training images when asked for), each sample's
draws seeded by (seed, epoch, key): its position, or its slot under repeated augmentation.

Every sample is read through ShardReader.read (its checksum verified) and decoded under the loader's bad-sample
policy: a sample that fails either is a BadSampleError naming shard, key and split, or (policy "skip") is
replaced by the next good sample of its shard, counted in memory the forked workers share with this process."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from pipelines import randaugment as RA
from pipelines import transforms as T
from pipelines.loaders.common import Loader
from pipelines.shards import ShardReader, decode_npy


def load_image(
    data: bytes | memoryview,
    channels: int,
    size: tuple[int, int],
    train: bool,
    rng: np.random.Generator,
    *,
    crop_scale: tuple[float, float],
    eval_crop_ratio: float,
    flip: bool = True,
    pad_crop: int = 0,
) -> torch.Tensor:
    """Decode a JPEG and crop+resize it in one PIL resize: uint8 (C, H, W).

    Training: Inception random-resized crop of `crop_scale` of the area and (``flip``) a horizontal flip with
    probability 1/2; with `pad_crop` > 0 instead torchvision's RandomCrop(size, padding=pad_crop) then the flip,
    on the image as evaluation at crop ratio 1 sees it (itself when it has `size`). Evaluation: the centered
    square of side eval_crop_ratio * shorter side, resized to `size`.
    Large JPEGs are decoded at a reduced DCT scale (PIL's draft) when the crop still has at least `size` pixels.
    """
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    mode = "L" if channels == 1 else "RGB"
    w, h = img.size
    draws = None
    if train and pad_crop:  # the whole image at `size`, then the padded crop and flip in torch (below)
        top, left, ch, cw = T.center_crop_box(h, w, 1.0)
        draws, mirror = T.pad_crop_draws(rng, pad_crop, flip), False
    elif train:
        top, left, ch, cw = T.random_resized_crop_box(h, w, rng, crop_scale)
        mirror = rng.random() < 0.5 and flip  # drawn either way: the other draws stay the same
    else:
        top, left, ch, cw = T.center_crop_box(h, w, eval_crop_ratio)
        mirror = False
    reduce = min(cw / size[1], ch / size[0])
    if reduce >= 2 and img.format == "JPEG":
        img.draft(mode, (math.ceil(w / reduce), math.ceil(h / reduce)))
    sx, sy = img.size[0] / w, img.size[1] / h
    if img.mode != mode:
        img = img.convert(mode)
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
    if mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    # contiguous, writable CHW (stacking strided views is ~10x slower; PIL's buffers are read-only)
    out = np.ascontiguousarray(arr)
    out = torch.from_numpy(out if out.flags.writeable else out.copy())
    return out if draws is None else T.padded_random_crop(out, pad_crop, draws)


def load_volume(
    data: bytes | memoryview,
    size: tuple[int, int, int],
    train: bool,
    rng: np.random.Generator,
    *,
    eval_crop_ratio: float,
    flip: bool = True,
) -> torch.Tensor:
    """Decode an npy volume (C, D, H, W) and crop/flip (training) or resize and center crop (evaluation)."""
    vol = torch.from_numpy(decode_npy(data).copy())
    return T.volume_transform(vol, size, train, rng, eval_crop_ratio=eval_crop_ratio, flip=flip).contiguous()


class _Dataset(torch.utils.data.Dataset):
    """Map-style dataset over (epoch, position) pairs so workers derive per-sample seeds."""

    def __init__(self, reader: ShardReader, loader: WebDatasetLoader):
        self.reader = reader
        self.kind = reader.manifest["kind"]
        self.channels = loader.channels
        self.size = loader.image_size
        self.train = loader.train
        self.seed = loader.seed
        self.eval_crop_ratio = loader.eval_crop_ratio
        self.crop_scale = loader.crop_scale
        self.flip, self.pad_crop = loader.flip, loader.pad_crop
        self.randaugment = loader.randaugment
        self.three_augment, self.color_jitter = loader.three_augment, loader.color_jitter
        self.policy = loader.bad_policy

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, pos, key = item  # key: the sample's augmentation key (Loader.sample_keys)
        rng = np.random.default_rng([self.seed, epoch, key])
        return self.policy.read(lambda p: self._load(epoch, p, key, rng), pos, self.reader.neighbours)

    def _load(
        self, epoch: int, pos: int, key: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, int, int]:
        """Sample `pos` decoded and augmented (with the random draws of the key asked for)."""
        data, label, index = self.reader.read(pos)
        try:
            x = self._decode(data, rng)
            if self.randaugment is not None:  # after the crop and flip, on the uint8 image
                x = RA.rand_augment(x, *self.randaugment, RA.sample_rng(self.seed, epoch, key))
            x = T.pixel_augment(  # 3-Augment and colour jitter, last (DeiT III's augment.py order)
                x, T.augment_rng(self.seed, epoch, key), three=self.three_augment, jitter=self.color_jitter
            )
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError...; numpy ValueError
            raise self.reader.bad(pos, f"cannot decode it ({type(exc).__name__}: {exc})") from exc
        return x, label, index

    def _decode(self, data: memoryview, rng: np.random.Generator) -> torch.Tensor:
        if self.kind == "image":
            return load_image(
                data,
                self.channels,
                self.size,
                self.train,
                rng,
                crop_scale=self.crop_scale,
                eval_crop_ratio=self.eval_crop_ratio,
                flip=self.flip,
                pad_crop=self.pad_crop,
            )
        return load_volume(
            data, self.size, self.train, rng, eval_crop_ratio=self.eval_crop_ratio, flip=self.flip
        )

    def collate(self, items: list[tuple[torch.Tensor, int, int]]) -> dict[str, Any]:
        # default_collate stacks straight into shared memory inside a worker: no copy on the way to the main process
        x, y, i = torch.utils.data.default_collate(items)
        # the warnings of bad samples replaced in this worker travel with the batch, to be logged by the main process
        return {
            "input": x,
            "label": y.to(torch.int64),
            "index": i.to(torch.int64),
            "bad": self.policy.drain(),
        }


class WebDatasetLoader(Loader):
    """Webdataset shards -> batches, with torch DataLoader worker processes doing decode and augmentation."""

    backend = "webdataset"

    def __init__(
        self, split_dir: str | os.PathLike, *, verify: bool = False, prefetch_factor: int = 4, **kwargs: Any
    ):
        self.reader = ShardReader(split_dir, verify=verify)
        super().__init__(self.reader.manifest, **kwargs)
        self.prefetch_factor = prefetch_factor
        self._dataset = _Dataset(self.reader, self)

    def _iter_raw(self, batches: list[np.ndarray], first: int) -> Iterator[dict[str, Any]]:
        if not batches:
            return
        epoch = self.epoch
        keys = [self.batch_keys(first + j, epoch) for j in range(len(batches))]
        sampler = [[(epoch, int(p), int(k)) for p, k in zip(b, kb)] for b, kb in zip(batches, keys)]
        workers = min(self.workers, len(sampler))
        extra: dict[str, Any] = {}
        if workers > 0:
            extra = {"prefetch_factor": self.prefetch_factor, "multiprocessing_context": "fork"}
        dl = torch.utils.data.DataLoader(
            self._dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=self._dataset.collate,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_worker_init,
            **extra,
        )
        for batch in dl:
            self.bad_policy.report(batch.pop("bad"))
            yield batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
