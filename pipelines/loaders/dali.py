"""The DALI backend: NVIDIA DALI decodes and augments; the webdataset shards are read by position.

The encoded samples (JPEG or npy bytes, sliced from the mmapped tars through the DALI index files)
are fed to the pipeline with `external_source`, so the order, rank partition and resume match the
other backends exactly. On a machine with a GPU the JPEGs are decoded with DALI's mixed (nvJPEG)
decoder and every later op runs on the GPU; without one (or with device="cpu") everything runs on
the CPU (`device_id=None`).
RandAugment (2D training) is DALI's own `auto_aug.rand_augment` suite, set to randaugment.py's ranges; it
needs DALI conditionals, so the graph is built through `pipeline_def(enable_conditionals=True)` then. 3-Augment and
colour jitter are DALI operators too (_three_augment); their draws are DALI's per-sample generators (seeded per run
and rank), so each repeated copy differs, but not with the webdataset/FFCV backends' pixels.
Images leave a GPU pipeline (or a CPU one feeding a GPU) as uint8 (float16 volumes as float16) and are normalized
by the base class where they lie, on the GPU; a CPU pipeline whose batches stay on the CPU normalizes inside DALI
(crop_mirror_normalize, in DALI's own threads, not in the training process). prefetch_queue_depth (2) runs stay in flight; evaluation pipelines, which
draw nothing at random, are kept built per (split, size, batch, ...) and reused by the next loader of that key
(take_pipeline), so validations and resolution sweeps build each decoder once.
Samples are read (their checksums verified) in Python before they are fed, under the loader's bad-sample policy;
a sample DALI's decoder refuses (possible only in shards without checksums) is found by decoding the batch
with PIL and named in a BadSampleError; "skip" cannot replace it inside DALI's pipeline, so it ends the epoch.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import OrderedDict, deque
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch

from pipelines import transforms as T
from pipelines.errors import BadSampleError, DataError
from pipelines.loaders.common import Loader
from pipelines.shards import ShardReader, decode_npy

log = logging.getLogger(__name__)
_CONVERSION_TRIES = 3
_MAX_IDLE_PIPES = 8  # evaluation pipelines kept built for reuse, all keys together (oldest dropped first)
_IDLE_PIPES: OrderedDict[tuple, list] = OrderedDict()


def take_pipeline(key: tuple):
    """An idle built evaluation pipeline of `key` (DALILoader._pipe_key), or None: each validation and sweep size
    reuses the one built the first time instead of building a new decoder (nvJPEG state, buffers) every time."""
    pipes = _IDLE_PIPES.get(key)
    return pipes.pop() if pipes else None


def return_pipeline(key: tuple, pipe) -> None:
    """Put an evaluation pipeline back, idle and clean (nothing fed or scheduled), for the next loader of `key`."""
    _IDLE_PIPES.setdefault(key, []).append(pipe)
    _IDLE_PIPES.move_to_end(key)
    while sum(len(v) for v in _IDLE_PIPES.values()) > _MAX_IDLE_PIPES:
        oldest = next(iter(_IDLE_PIPES))
        _IDLE_PIPES[oldest].pop(0)
        if not _IDLE_PIPES[oldest]:
            del _IDLE_PIPES[oldest]


def clear_pipeline_cache() -> None:
    """Drop every idle evaluation pipeline (frees their device memory once nothing else holds them)."""
    _IDLE_PIPES.clear()


def _use_gpu(device: str | None) -> bool:
    if device in (None, "auto"):
        return torch.cuda.is_available()
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu', 'gpu' or None (auto), got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("DALI device='gpu' asked for, but torch sees no CUDA device")
    return device == "gpu"


def _queue_depth(depth: int) -> int:
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise ValueError(
            f"prefetch_queue_depth must be an integer >= 1 (batches DALI runs ahead), got {depth!r}"
        )
    return int(depth)


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


def _luma(x):
    """Float HWC RGB -> HW1 luma, ITU-R 601-2 weights (transforms._gray)."""
    return 0.299 * x[:, :, 0:1] + 0.587 * x[:, :, 1:2] + 0.114 * x[:, :, 2:3]


def _color_jitter(x, strength: float, gray: bool):
    """transforms.color_jitter with DALI's arithmetic on float HWC in [0, 255]: brightness, contrast (blend with the
    mean luma, fn.reductions.mean) and saturation (blend with the luma; none on 1 channel), factors
    U[1 - s, 1 + s] per sample. The order is fixed where torchvision's is random: the three maps commute but for
    the clipping to [0, 255] after each, so only saturated pixels can differ."""
    from nvidia.dali import fn
    from nvidia.dali import math as dmath

    def factor():
        return fn.random.uniform(range=[max(0.0, 1 - strength), 1 + strength])

    x = dmath.clamp(x * factor(), 0.0, 255.0)
    luma = x if gray else _luma(x)
    f = factor()
    x = dmath.clamp(x * f + (1.0 - f) * fn.reductions.mean(luma), 0.0, 255.0)
    if not gray:
        f = factor()
        x = dmath.clamp(x * f + (1.0 - f) * _luma(x), 0.0, 255.0)
    return x


def _three_augment(img, *, three: bool, jitter: float, gray: bool):
    """DeiT III's 3-Augment (facebookresearch/deit augment.py, new_data_aug_generator: RandomChoice of grayscale,
    solarization and Gaussian blur, then ColorJitter) with DALI operators on uint8 HWC images: one op per image,
    each with probability 1/3 (fn.random.uniform over {0, 1, 2}); grayscale kept 3-channel, solarization above 128
    (PIL's threshold) by arithmetic, fn.gaussian_blur with sigma ~ U(0.1, 2); then _color_jitter. All three are
    computed and the drawn one kept by masks (no DALI conditionals needed). Returns uint8 HWC."""
    from nvidia.dali import fn, types

    x = fn.cast(img, dtype=types.FLOAT)
    if three:
        choice = fn.random.uniform(values=[0, 1, 2], dtype=types.INT32)
        grayed = x if gray else fn.cat(_luma(x), _luma(x), _luma(x), axis=2)
        solarized = x + (x >= 128.0) * (255.0 - 2.0 * x)
        blurred = fn.gaussian_blur(x, sigma=fn.random.uniform(range=[0.1, 2.0]))
        x = (choice == 0) * grayed + (choice == 1) * solarized + (choice == 2) * blurred
    if jitter > 0:
        x = _color_jitter(x, jitter, gray)
    return fn.cast(x, dtype=types.UINT8)  # rounds to nearest and saturates


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
        self,
        split_dir: str | os.PathLike,
        *,
        verify: bool = False,
        device: str | None = None,
        prefetch_queue_depth: int = 2,
        **kwargs: Any,
    ):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"data.backend=dali needs NVIDIA DALI, which is not installed ({e}): `make install` "
                "installs it, or choose data.backend=webdataset"
            ) from e

        self.reader = ShardReader(split_dir, verify=verify)
        super().__init__(self.reader.manifest, **kwargs)
        self.split_dir = self.reader.split_dir
        self.gpu = _use_gpu(device)
        self.prefetch_queue_depth = _queue_depth(prefetch_queue_depth)
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
                    # batches decoded ahead of the consumer: 2 keeps the decoder busy while a step runs
                    prefetch_queue_depth=self.prefetch_queue_depth,
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

    def _pipe_key(self) -> tuple:
        """What an evaluation pipeline's graph and build depend on: loaders with the same key share built ones."""
        device = torch.cuda.current_device() if self.gpu else None
        return (type(self).__name__, str(self.split_dir), self.image_size, self.batch_size, self.eval_crop_ratio,
                device, max(1, self.workers), self.prefetch_queue_depth, self._normalizes)  # fmt: skip

    @property
    def _normalizes(self) -> bool:
        """Whether the pipeline normalizes images itself: a CPU pipeline whose batches are finished on the CPU
        (uint8 is worth its smaller copy only on the way to a GPU)."""
        return self.info["kind"] == "image" and not self.gpu and self.device.type == "cpu"

    def _pipe_seed(self) -> int:
        """The seed of DALI's random ops (and of a stream reader's shuffle): per run and rank."""
        return (self.seed * 1000003 + self.rank) % (2**31)

    def _graph(self):
        """The pipeline's graph (traced by pipeline_def): encoded samples in, the finished batch out."""
        return self._image_graph() if self.info["kind"] == "image" else self._volume_graph()

    def _image_graph(self, enc=None):
        """JPEG bytes (fed, or `enc`: a reader's output) -> decoded, cropped (random resized in training, center in
        evaluation), flipped, RandAugment-ed, 3-Augment-ed and colour-jittered when asked for: uint8 CHW (normalized
        by the base class where the batch lies, on the GPU after a GPU pipeline: a quarter of float32's bytes)."""
        from nvidia.dali import fn, types

        if enc is None:
            enc = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
        out_type = types.GRAY if self.channels == 1 else types.RGB
        dec = "mixed" if self.gpu else "cpu"
        h, w = self.image_size
        if self.train:
            img, mirror = (
                self._pad_crop(enc, dec, out_type)
                if self.pad_crop
                else self._resized_crop(enc, dec, out_type)
            )
            if self.randaugment is not None:
                img = _rand_augment(img, *self.randaugment, size=(h, w), gray=self.channels == 1)
            if self.three_augment or self.color_jitter > 0:  # last, as in DeiT III's augment.py
                three, jitter = self.three_augment, self.color_jitter
                img = _three_augment(img, three=three, jitter=jitter, gray=self.channels == 1)
        else:
            img, mirror = self._eval_image(enc, dec, out_type, self.eval_crop_ratio), 0
        if self._normalizes:
            return fn.crop_mirror_normalize(
                img, crop=(h, w), mirror=mirror, dtype=types.FLOAT, output_layout="CHW",
                mean=[m * 255.0 for m in self.info["mean"]], std=[s * 255.0 for s in self.info["std"]],
            )  # fmt: skip
        return fn.crop_mirror_normalize(
            img, crop=(h, w), mirror=mirror, dtype=types.UINT8, output_layout="CHW"
        )

    def _resized_crop(self, enc, dec: str, out_type):
        """Training's random-resized crop of `crop_scale` of the area, resized to the image size; DALI's flip draw."""
        from nvidia.dali import fn, types

        h, w = self.image_size
        img = fn.decoders.image_random_crop(
            enc,
            device=dec,
            output_type=out_type,
            random_area=list(self.crop_scale),
            random_aspect_ratio=[3 / 4, 4 / 3],
            num_attempts=10,
        )
        img = fn.resize(img, resize_x=w, resize_y=h, interp_type=types.INTERP_LINEAR, antialias=True)
        return img, fn.random.coin_flip(probability=0.5) if self.flip else 0

    def _eval_image(self, enc, dec: str, out_type, crop_ratio: float):
        """Decoded, its shorter side resized to size / crop_ratio (the center crop follows in the graph's end)."""
        from nvidia.dali import fn, types

        img = fn.decoders.image(enc, device=dec, output_type=out_type)
        shorter = max(1, round(max(self.image_size) / crop_ratio))
        return fn.resize(img, resize_shorter=shorter, interp_type=types.INTERP_LINEAR, antialias=True)

    def _pad_crop(self, enc, dec: str, out_type):
        """torchvision's RandomCrop(size, padding=pad_crop) then the flip, on the image as evaluation at crop ratio 1
        sees it: fn.slice at anchor (top - pad, left - pad), zeros outside. Indexed, the anchors and flips are fed
        (_gather: transforms.pad_crop_draws from the webdataset backend's (seed, epoch, key) generator, so the
        three backends crop alike); under a stream reader (`enc` given) DALI draws them."""
        from nvidia.dali import fn, types

        h, w = self.image_size
        img = fn.crop(self._eval_image(enc, dec, out_type, 1.0), crop=(h, w))
        if self._feeds_pad_crop:
            anchor = fn.external_source(name="pad_anchor", dtype=types.FLOAT, ndim=1)
            mirror = fn.external_source(name="pad_mirror", dtype=types.INT32, ndim=0)
        else:
            shift = list(range(-self.pad_crop, self.pad_crop + 1))
            anchor = fn.cast(fn.random.uniform(values=shift, shape=[2], dtype=types.INT32), dtype=types.FLOAT)
            mirror = fn.random.coin_flip(probability=0.5) if self.flip else 0
        size = np.array([h, w], dtype=np.float32)
        img = fn.slice(img, anchor, size, axis_names="HW", normalized_anchor=False, normalized_shape=False,
                       out_of_bounds_policy="pad", fill_values=0)  # fmt: skip
        return img, mirror

    @property
    def _feeds_pad_crop(self) -> bool:
        """Whether the padded crop's draws are fed with the samples (indexed reading; a stream reader draws them)."""
        return bool(self.pad_crop) and getattr(self, "access", "indexed") == "indexed"

    def _volume_graph(self, vol=None):
        """npy volumes (C, D, H, W; fed, or `vol`: decoded from a reader's output) -> random crop and flip
        (training) or resize and center crop (evaluation), as transforms.volume_transform does; in the stored dtype
        (uint8 or float16), normalized by the base class."""
        from nvidia.dali import fn, types

        dtype = types.FLOAT16 if self.info["dtype"] == "float16" else types.UINT8
        if vol is None:
            vol = fn.external_source(name="data", dtype=dtype, ndim=4, layout="CDHW")
        if dtype == types.FLOAT16:
            vol = fn.cast(vol, dtype=types.FLOAT)  # DALI's CPU resize has no float16 kernel
        if self.gpu:
            vol = vol.gpu()
        vol = self._volume_ops(vol)
        return fn.cast(vol, dtype=types.FLOAT16) if dtype == types.FLOAT16 else vol  # half the bytes out

    def _volume_ops(self, vol):
        """The crop, resize and flip of _volume_graph."""
        from nvidia.dali import fn

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
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device="cuda" if self.gpu else "cpu")
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

    def _gather(
        self, item: tuple[np.ndarray, np.ndarray]
    ) -> tuple[dict[str, list], np.ndarray, torch.Tensor, torch.Tensor]:
        """One batch (positions, augmentation keys): the pipeline's inputs by name (the encoded samples, read and
        verified under the bad-sample policy; pad_crop's draws), the positions fed, labels and indices (those of
        the replacements where the policy replaced bad samples)."""
        batch, keys = item
        samples = [self.bad_policy.read(self._read, int(p), self.reader.neighbours) for p in batch]
        labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
        fed = np.array([s[3] for s in samples], dtype=np.int64)
        inputs = {"data": [s[0] for s in samples]}
        if self._feeds_pad_crop:
            pad = self.pad_crop
            draws = [T.pad_crop_draws(np.random.default_rng([self.seed, self.epoch, int(k)]), pad, self.flip)
                     for k in keys]  # fmt: skip
            inputs["pad_anchor"] = [np.array([t - pad, u - pad], dtype=np.float32) for t, u, _ in draws]
            inputs["pad_mirror"] = [np.array(m, dtype=np.int32) for _, _, m in draws]
        return inputs, fed, labels, torch.tensor([s[2] for s in samples], dtype=torch.int64)

    def _feed(self, gathered) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        for name, data in gathered[0].items():
            self._pipe.feed_input(name, data)
        return gathered[1:]

    def _start(self, todo: Iterator[tuple[np.ndarray, np.ndarray]]) -> deque:
        """Feed and schedule the epoch's first prefetch_queue_depth batches. A pipeline's first schedule_run runs
        prefetch_queue_depth times (DALI's prefetch), so a new one is fed that many first: copies of the last
        batch where the epoch has fewer, their outputs dropped (labels None)."""
        depth = self.prefetch_queue_depth
        gathered = [self._gather(b) for b in islice(todo, depth)]  # every read done before anything is fed
        pending: deque = deque(self._feed(g) for g in gathered)
        if getattr(self._pipe, "_liere_started", False):
            for _ in gathered:
                self._pipe.schedule_run()
            return pending
        for _ in range(depth - len(gathered)):
            fed, _, _ = self._feed(gathered[-1])
            pending.append((fed, None, None))
        self._pipe.schedule_run()
        self._pipe._liere_started = True
        return pending

    def _take(self, batch: np.ndarray) -> torch.Tensor:
        """The pipeline's output for `batch`, copied out and its buffers handed back (so DALI keeps
        prefetch_queue_depth runs going); a decoder failure names the sample (found by decoding with PIL)."""
        try:
            (out,) = self._pipe.share_outputs()
        except RuntimeError as exc:
            self._pipe = None  # rebuilt by the next iteration
            self._name_bad_sample(batch, exc)
            raise DataError(
                f"{self.split_dir}: DALI failed on a batch of {len(batch)} samples: {exc}"
            ) from exc
        x = self._to_torch(out)  # on the GPU, queued on torch's stream as DALI's own iterator does
        self._pipe.release_outputs()
        return x

    def _name_bad_sample(self, batch: np.ndarray, exc: RuntimeError) -> None:
        for p in batch if self.info["kind"] == "image" else ():
            try:
                from PIL import Image

                Image.open(io.BytesIO(self.reader.read(int(p))[0])).load()
            except BadSampleError as bad:
                raise bad from exc
            except Exception as err:
                raise self.reader.bad(int(p), f"DALI cannot decode it ({type(err).__name__}: {err})") from exc

    def _acquire(self) -> None:
        """The pipeline of this iteration: the training loader's own (built once); in evaluation an idle one of
        the same key (take_pipeline) or a new one."""
        if self._pipe is None:
            self._pipe = (None if self.train else take_pipeline(self._pipe_key())) or self._build()

    def _iter_raw(self, batches: list[np.ndarray], first: int) -> Iterator[dict[str, Any]]:
        if not batches:
            return
        self._acquire()
        todo = zip(batches, (self.batch_keys(first + j) for j in range(len(batches))))
        pending: deque = deque()
        try:
            pending = self._start(todo)
            while pending:
                b, labels, indices = pending.popleft()
                x = self._take(b)
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(self._feed(self._gather(nxt)))
                    self._pipe.schedule_run()
                if labels is not None:
                    yield {"input": x, "label": labels, "index": indices, "normalized": self._normalizes}
        finally:
            self._settle(pending)

    def _settle(self, pending: deque) -> None:
        """After an epoch (or leaving it early): collect the runs still scheduled so the next epoch starts clean;
        an evaluation pipeline goes back to the idle ones (at interpreter exit the pipeline may already be torn
        down; nothing is left to clean then)."""
        for _ in pending if self._pipe is not None else ():
            try:
                self._pipe.share_outputs()
                self._pipe.release_outputs()
            except (AttributeError, RuntimeError):
                self._pipe = None
                break
        if not self.train and self._pipe is not None:
            return_pipeline(self._pipe_key(), self._pipe)
            self._pipe = None
