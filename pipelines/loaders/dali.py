"""The DALI backend: NVIDIA DALI decodes and augments; the webdataset shards are read by position.

The encoded samples (JPEG or npy bytes, sliced from the mmapped tars through the DALI index files)
are fed to the pipeline with `external_source`, so the order, rank partition and resume match the
other backends exactly. On a machine with a GPU the JPEGs are decoded with DALI's mixed (nvJPEG)
decoder and every later op runs on the GPU; without one (or with device="cpu") everything runs on
the CPU (`device_id=None`).
RandAugment (2D training) is DALI's own `auto_aug.rand_augment` suite, set to randaugment.py's ranges; it
needs DALI conditionals, so the graph is built through `pipeline_def(enable_conditionals=True)` then.
Samples are read (their checksums verified) in Python before they are fed, under the loader's bad-sample policy;
a sample DALI's decoder refuses (possible only in shards without checksums) is found by decoding the batch
with PIL and named in a BadSampleError; "skip" cannot replace it inside DALI's pipeline, so it ends the epoch.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch

from pipelines.errors import BadSampleError, DataError
from pipelines.loaders.common import Loader
from pipelines.shards import ShardReader, decode_npy

log = logging.getLogger(__name__)
_CONVERSION_TRIES = 3


def _use_gpu(device: str | None) -> bool:
    if device in (None, "auto"):
        return torch.cuda.is_available()
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu', 'gpu' or None (auto), got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("DALI device='gpu' asked for, but torch sees no CUDA device")
    return device == "gpu"


def _forget_unconverted_functions() -> bool:
    """Empty AutoGraph's record of functions it runs unconverted, so a failed conversion is tried again
    (a private DALI structure: False where this DALI version lacks it)."""
    try:
        from nvidia.dali._autograph.impl import conversion

        conversion._ALLOWLIST_CACHE._cache.clear()
    except (ImportError, AttributeError):
        return False
    return True


def _rand_augment(img, num_ops: int, magnitude: int, size: tuple[int, int], gray: bool):
    """DALI's RandAugment suite on uint8 HWC images, matched to randaugment.py: magnitude bins 0..30, translations
    up to 0.45 of the image side, gray fill; on 1-channel images `color` (DALI's saturation, which needs three
    channels) is replaced by the identity, as randaugment.py's `color` is there."""
    from nvidia.dali.auto_aug import augmentations, rand_augment

    from pipelines import randaugment as RA

    suite = rand_augment.get_rand_augment_suite(use_shape=True, max_translate_rel=0.45)
    if gray:
        suite = [augmentations.identity.augmentation(name="color") if a.name == "color" else a for a in suite]
    assert len(suite) == len(RA.OPS)
    return rand_augment.apply_rand_augment(
        suite,
        img,
        num_ops,
        magnitude,
        num_magnitude_bins=RA.MAX_MAGNITUDE + 1,
        shape=list(size),
        fill_value=128,
    )


def _resize_volume(vol, size: list[int]):
    """Linear resize of a CDHW DALI volume to `size` (D, H, W): DALI resizes channels-last."""
    from nvidia.dali import fn, types

    dhwc = fn.transpose(vol, perm=[1, 2, 3, 0], output_layout="DHWC")
    dhwc = fn.resize(dhwc, size=size, interp_type=types.INTERP_LINEAR, antialias=False)
    return fn.transpose(dhwc, perm=[3, 0, 1, 2], output_layout="CDHW")


class DALILoader(Loader):
    """Webdataset shards -> DALI pipeline -> batches (torch tensors on the pipeline's device)."""

    backend = "dali"

    def __init__(
        self, split_dir: str | os.PathLike, *, verify: bool = False, device: str | None = None, **kwargs: Any
    ):
        import nvidia.dali  # noqa: F401  (fail here, clearly, when DALI is not installed)

        self.reader = ShardReader(split_dir, verify=verify)
        super().__init__(self.reader.manifest, **kwargs)
        self.gpu = _use_gpu(device)
        self._pipe = None

    # ---- pipeline ------------------------------------------------------------------------------
    def _build(self):
        from nvidia.dali import pipeline_def

        # DALI's RandAugment picks each sample's ops with per-sample `if`s: DALI conditionals, for which
        # AutoGraph rewrites the graph function's source
        conditionals = self.randaugment is not None
        define = pipeline_def(self._graph, enable_conditionals=conditionals)
        for attempt in range(_CONVERSION_TRIES if conditionals else 1):
            try:
                pipe = define(
                    batch_size=self.batch_size,
                    num_threads=max(1, self.workers),
                    device_id=torch.cuda.current_device() if self.gpu else None,
                    seed=self._pipe_seed(),
                    prefetch_queue_depth=1,  # one batch runs (asynchronously) while the consumer holds the previous one
                )
                break
            except TypeError as e:
                # CPython 3.11 can fail an ast.parse while another thread parses too (e.g. numba compiling for
                # FFCV: "AST constructor recursion depth mismatch", python/cpython#106905); AutoGraph then runs
                # the function unconverted (and remembers to), and the first `if` on a DataNode raises.
                last = attempt == _CONVERSION_TRIES - 1
                if "conditional context" not in str(e) or last or not _forget_unconverted_functions():
                    raise
                log.warning("DALI's AutoGraph could not convert the RandAugment pipeline; converting again")
        pipe.build()
        return pipe

    def _pipe_seed(self) -> int:
        """The seed of DALI's random ops (and of a stream reader's shuffle): per run and rank."""
        return (self.seed * 1000003 + self.rank) % (2**31)

    def _graph(self):
        """The pipeline's graph (traced by pipeline_def): encoded samples in, the finished batch out."""
        return self._image_graph() if self.info["kind"] == "image" else self._volume_graph()

    def _image_graph(self, enc=None):
        """JPEG bytes (fed, or `enc`: a reader's output) -> decoded, cropped (random resized in training, center in
        evaluation), flipped, RandAugment-ed when asked for, normalized float CHW."""
        from nvidia.dali import fn, types

        if enc is None:
            enc = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
        out_type = types.GRAY if self.channels == 1 else types.RGB
        dec = "mixed" if self.gpu else "cpu"
        h, w = self.image_size
        if self.train:
            img = fn.decoders.image_random_crop(
                enc,
                device=dec,
                output_type=out_type,
                random_area=list(self.crop_scale),
                random_aspect_ratio=[3 / 4, 4 / 3],
                num_attempts=10,
            )
            img = fn.resize(img, resize_x=w, resize_y=h, interp_type=types.INTERP_LINEAR, antialias=True)
            mirror = fn.random.coin_flip(probability=0.5) if self.flip else 0
            if self.randaugment is not None:
                img = _rand_augment(img, *self.randaugment, size=(h, w), gray=self.channels == 1)
        else:
            img = fn.decoders.image(enc, device=dec, output_type=out_type)
            shorter = max(1, round(max(h, w) / self.eval_crop_ratio))
            img = fn.resize(img, resize_shorter=shorter, interp_type=types.INTERP_LINEAR, antialias=True)
            mirror = 0
        return fn.crop_mirror_normalize(
            img,
            crop=(h, w),
            mirror=mirror,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[m * 255.0 for m in self.info["mean"]],
            std=[s * 255.0 for s in self.info["std"]],
        )

    def _volume_graph(self, vol=None):
        """npy volumes (C, D, H, W; fed, or `vol`: decoded from a reader's output) -> random crop and flip
        (training) or resize and center crop (evaluation), as transforms.volume_transform does; normalized by the
        base class."""
        from nvidia.dali import fn, types

        dtype = types.FLOAT16 if self.info["dtype"] == "float16" else types.UINT8
        if vol is None:
            vol = fn.external_source(name="data", dtype=dtype, ndim=4, layout="CDHW")
        if dtype == types.FLOAT16:
            vol = fn.cast(vol, dtype=types.FLOAT)  # DALI's CPU resize has no float16 kernel
        if self.gpu:
            vol = vol.gpu()
        d, h, w = self.image_size
        if not self.train:
            r = self.eval_crop_ratio
            vol = _resize_volume(vol, [round(d / r), round(h / r), round(w / r)])
            return fn.crop(vol, crop_d=d, crop_h=h, crop_w=w, out_of_bounds_policy="pad")
        native = self.info["native_size"]
        if any(s > n for s, n in zip(self.image_size, native)):
            # smaller volumes are upscaled before the crop, as in transforms.volume_transform
            scale = max(s / n for s, n in zip(self.image_size, native))
            vol = _resize_volume(vol, [max(s, math.ceil(n * scale)) for s, n in zip(self.image_size, native)])
        out = fn.crop(
            vol,
            crop_d=d,
            crop_h=h,
            crop_w=w,
            out_of_bounds_policy="pad",
            crop_pos_z=fn.random.uniform(range=[0.0, 1.0]),
            crop_pos_y=fn.random.uniform(range=[0.0, 1.0]),
            crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
        )
        if self.flip:
            out = fn.flip(out, horizontal=fn.random.coin_flip(probability=0.5), vertical=0, depthwise=0)
        return out

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

    def _read(self, pos: int) -> tuple[np.ndarray, int, int, int]:
        """Sample `pos` as DALI's input (JPEG bytes or the decoded npy array), label, index and `pos`; its
        checksum verified."""
        data, label, index = self.reader.read(pos)
        if self.info["kind"] == "image":
            return np.frombuffer(data, dtype=np.uint8), label, index, pos
        try:
            return decode_npy(data), label, index, pos
        except Exception as exc:
            raise self.reader.bad(pos, f"cannot decode it ({type(exc).__name__}: {exc})") from exc

    def _feed(self, batch: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Hand one batch of encoded samples to the pipeline and schedule its run (DALI works on it in the
        background while earlier batches are consumed); returns the positions fed, labels and indices (those of
        the replacements where the policy replaced bad samples)."""
        samples = [self.bad_policy.read(self._read, int(p), self.reader.neighbours) for p in batch]
        self._pipe.feed_input("data", [s[0] for s in samples])
        self._pipe.schedule_run()
        labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
        fed = np.array([s[3] for s in samples], dtype=np.int64)
        return fed, labels, torch.tensor([s[2] for s in samples], dtype=torch.int64)

    def _outputs(self, batch: np.ndarray):
        """The pipeline's output for `batch`; a decoder failure names the sample (found by decoding with PIL)."""
        try:
            return self._pipe.outputs()
        except RuntimeError as exc:
            self._pipe = None  # rebuilt by the next iteration
            for p in batch if self.info["kind"] == "image" else ():
                try:
                    from PIL import Image

                    Image.open(io.BytesIO(self.reader.read(int(p))[0])).load()
                except BadSampleError as bad:
                    raise bad from exc
                except Exception as err:
                    raise self.reader.bad(
                        int(p), f"DALI cannot decode it ({type(err).__name__}: {err})"
                    ) from exc
            raise DataError(
                f"{self.reader.split_dir}: DALI failed on a batch of {len(batch)} samples: {exc}"
            ) from exc

    def _iter_raw(self, batches: list[np.ndarray], first: int) -> Iterator[dict[str, Any]]:
        if not batches:
            return
        if self._pipe is None:
            self._pipe = self._build()
        image = self.info["kind"] == "image"
        pending: deque[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = deque()
        todo = iter(batches)
        try:
            for b in islice(todo, 1):
                pending.append(self._feed(b))
            while pending:
                b, labels, indices = pending.popleft()
                (out,) = self._outputs(b)
                x = self._to_torch(out)  # copied out before the pipeline reuses its buffers
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(self._feed(nxt))
                yield {"input": x, "label": labels, "index": indices, "normalized": image}
        finally:
            # an epoch left early: collect the scheduled run so the next epoch starts clean (at interpreter
            # exit the pipeline may already be torn down; nothing is left to clean then)
            for _ in pending if self._pipe is not None else ():
                try:
                    self._pipe.outputs()
                except (AttributeError, RuntimeError):
                    break
