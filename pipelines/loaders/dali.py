"""The DALI backend: NVIDIA DALI decodes and augments; the webdataset shards are read by position.

The encoded samples (JPEG or npy bytes, sliced from the mmapped tars through the DALI index files)
are fed to the pipeline with `external_source`, so the order, rank partition and resume match the
other backends exactly. On a machine with a GPU the JPEGs are decoded with DALI's mixed (nvJPEG)
decoder and every later op runs on the GPU; here everything runs on the CPU (`device_id=None`).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch

from pipelines.loaders.common import Loader
from pipelines.loaders.shards import ShardReader
from pipelines.writers.encode import decode_npy


def _use_gpu(device: str | None) -> bool:
    if device in (None, "auto"):
        return torch.cuda.is_available()
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu', 'gpu' or None (auto), got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("DALI device='gpu' asked for, but torch sees no CUDA device")
    return device == "gpu"


class DALILoader(Loader):
    """Webdataset shards -> DALI pipeline -> batches (torch tensors on the pipeline's device)."""

    backend = "dali"

    def __init__(self, split_dir: str | os.PathLike, *, verify: bool = False, device: str | None = None,
                 **kwargs: Any):
        import nvidia.dali  # noqa: F401  (fail here, clearly, when DALI is not installed)

        self.reader = ShardReader(split_dir, verify=verify)
        super().__init__(self.reader.manifest, **kwargs)
        self.gpu = _use_gpu(device)
        self._pipe = None

    # ---- pipeline ------------------------------------------------------------------------------
    def _build(self):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        kind = self.info["kind"]
        pipe = Pipeline(
            batch_size=self.batch_size,
            num_threads=max(1, self.num_workers),
            device_id=torch.cuda.current_device() if self.gpu else None,
            seed=(self.seed * 1000003 + self.rank) % (2**31),
            prefetch_queue_depth=1,  # one batch runs (asynchronously) while the consumer holds the previous one
        )
        with pipe:
            if kind == "image":
                enc = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
                out_type = types.GRAY if self.channels == 1 else types.RGB
                dec = "mixed" if self.gpu else "cpu"
                h, w = self.image_size
                if self.train:
                    img = fn.decoders.image_random_crop(
                        enc, device=dec, output_type=out_type, random_area=list(self.scale),
                        random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10,
                    )
                    img = fn.resize(img, resize_x=w, resize_y=h, interp_type=types.INTERP_LINEAR, antialias=True)
                    mirror = fn.random.coin_flip(probability=0.5)
                else:
                    img = fn.decoders.image(enc, device=dec, output_type=out_type)
                    shorter = max(1, round(max(h, w) / self.crop_ratio))
                    img = fn.resize(img, resize_shorter=shorter, interp_type=types.INTERP_LINEAR, antialias=True)
                    mirror = 0
                out = fn.crop_mirror_normalize(
                    img, crop=(h, w), mirror=mirror, dtype=types.FLOAT, output_layout="CHW",
                    mean=[m * 255.0 for m in self.info["mean"]], std=[s * 255.0 for s in self.info["std"]],
                )
            else:
                dtype = types.FLOAT16 if self.info["dtype"] == "float16" else types.UINT8
                vol = fn.external_source(name="data", dtype=dtype, ndim=4, layout="CDHW")
                if dtype == types.FLOAT16:
                    vol = fn.cast(vol, dtype=types.FLOAT)  # DALI's CPU resize has no float16 kernel
                if self.gpu:
                    vol = vol.gpu()
                d, h, w = self.image_size
                native = self.info["native_size"]
                if self.train and any(s > n for s, n in zip(self.image_size, native)):
                    # smaller volumes are upscaled before the crop, as in transforms.volume_transform
                    scale = max(s / n for s, n in zip(self.image_size, native))
                    up = [max(s, math.ceil(n * scale)) for s, n in zip(self.image_size, native)]
                    vol = fn.transpose(vol, perm=[1, 2, 3, 0], output_layout="DHWC")
                    vol = fn.resize(vol, size=up, interp_type=types.INTERP_LINEAR, antialias=False)
                    vol = fn.transpose(vol, perm=[3, 0, 1, 2], output_layout="CDHW")
                if self.train:
                    out = fn.crop(
                        vol, crop_d=d, crop_h=h, crop_w=w, out_of_bounds_policy="pad",
                        crop_pos_z=fn.random.uniform(range=[0.0, 1.0]), crop_pos_y=fn.random.uniform(range=[0.0, 1.0]),
                        crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                    )
                    out = fn.flip(out, horizontal=fn.random.coin_flip(probability=0.5), vertical=0, depthwise=0)
                else:
                    r = self.crop_ratio
                    dhwc = fn.transpose(vol, perm=[1, 2, 3, 0], output_layout="DHWC")
                    dhwc = fn.resize(dhwc, size=[round(d / r), round(h / r), round(w / r)],
                                     interp_type=types.INTERP_LINEAR, antialias=False)
                    out = fn.transpose(dhwc, perm=[3, 0, 1, 2], output_layout="CDHW")
                    out = fn.crop(out, crop_d=d, crop_h=h, crop_w=w, out_of_bounds_policy="pad")
            pipe.set_outputs(out)
        pipe.build()
        return pipe

    def _to_torch(self, tl) -> torch.Tensor:
        """Copy a DALI output (its buffers are reused by the next run) into a new torch tensor, once."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = tl.as_tensor()
        if self.info["kind"] == "image":
            dtype = torch.float32
        else:
            dtype = torch.float32 if self.info["dtype"] == "float16" else torch.uint8
        out = torch.empty(t.shape(), dtype=dtype, device="cuda" if self.gpu else "cpu")
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream() if self.gpu else None)
        return out

    def _feed(self, batch: np.ndarray) -> None:
        """Hand one batch of encoded samples to the pipeline and schedule its run (DALI works on it in the
        background while earlier batches are consumed)."""
        if self.info["kind"] == "image":
            data = [np.frombuffer(self.reader.payload(int(p)), dtype=np.uint8) for p in batch]
        else:
            data = [decode_npy(self.reader.payload(int(p))) for p in batch]
        self._pipe.feed_input("data", data)
        self._pipe.schedule_run()

    def _iter_raw(self, batches: list[np.ndarray], first: int) -> Iterator[dict[str, Any]]:
        if not batches:
            return
        if self._pipe is None:
            self._pipe = self._build()
        image = self.info["kind"] == "image"
        pending: deque[np.ndarray] = deque()
        todo = iter(batches)
        try:
            for b in islice(todo, 1):
                self._feed(b)
                pending.append(b)
            while pending:
                (out,) = self._pipe.outputs()
                b = pending.popleft()
                x = self._to_torch(out)  # copied out before the pipeline reuses its buffers
                nxt = next(todo, None)
                if nxt is not None:
                    self._feed(nxt)
                    pending.append(nxt)
                yield {
                    "input": x,
                    "label": torch.tensor([self.reader.label(int(p)) for p in b], dtype=torch.int64),
                    "index": torch.tensor([self.reader.index(int(p)) for p in b], dtype=torch.int64),
                    "normalized": image,
                }
        finally:
            # an epoch left early: collect the scheduled run so the next epoch starts clean (at interpreter
            # exit the pipeline may already be torn down; nothing is left to clean then)
            for _ in pending:
                try:
                    self._pipe.outputs()
                except (AttributeError, RuntimeError):
                    break
