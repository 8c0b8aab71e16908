"""The FFCV backend: one .beton per split, decoded and augmented by FFCV's compiled pipelines.

The sample order is ours (loaders/common.py): each epoch the FFCV loader is pointed at this rank's
positions with sequential traversal, so order, rank partition and resume match the other backends.
2D: FFCV's random-resized-crop / center-crop decoders, flip and normalization; RandAugment, 3-Augment and colour
jitter, when asked for, run on the uint8 batch in torch (randaugment.py, transforms.py, in this process, image by
image on `workers` threads: torch's ops release the GIL) with the same per-sample seeds as the webdataset backend
(a repeated copy's from its slot); the finished uint8 batch goes to the device in the base class (FFCV's ToDevice
would copy before the checksum replacement and the augmentation, which work on the CPU batch). 3D: FFCV reads the arrays; transforms.py crops and flips them with the same
per-sample seeds as the webdataset backend.
Integrity: FFCV's compiled reader cannot check the per-sample CRC-32s the writer stored (`{split}.crc32.npy`),
so this loader recomputes them for each batch's samples from the file (shards/beton.py) before handing the
batch out: a mismatch is a BadSampleError naming the .beton, the sample's position and the split, or under
the "skip" policy the sample is replaced by the next good sample of the same batch (counted, logged).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines import randaugment as RA
from pipelines import transforms as T
from pipelines.errors import BadSampleError, DataError
from pipelines.loaders.common import Loader
from pipelines.shards import read_manifest, sha256_file
from pipelines.shards.beton import BetonChecksums

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


class FFCVLoader(Loader):
    """FFCV .beton -> batches."""

    backend = "ffcv"

    def __init__(
        self,
        beton: str | os.PathLike,
        manifest: str | os.PathLike,
        *,
        verify: bool = False,
        batches_ahead: int = 3,
        **kwargs: Any,
    ):
        import ffcv  # noqa: F401  (fail here, clearly, when FFCV is not installed)

        self.beton = Path(beton)
        info = read_manifest(manifest)
        if not self.beton.is_file():
            raise DataError(f"{self.beton}: missing, though {manifest} lists it")
        if self.beton.stat().st_size != info["filesize"]:
            raise DataError(
                f"{self.beton}: {self.beton.stat().st_size} bytes, the manifest says {info['filesize']}"
            )
        if verify and sha256_file(self.beton) != info["sha256"]:
            raise DataError(f"{self.beton}: sha256 differs from {manifest}")
        super().__init__(info, **kwargs)
        self.batches_ahead = batches_ahead
        _record_thread_errors()
        self._loader = None
        self._pool: ThreadPoolExecutor | None = None  # per-image augmentation threads, made on first use
        self._sums, self._expected = self._checksums(info, Path(manifest))

    def _checksums(
        self, info: dict[str, Any], manifest: Path
    ) -> tuple[BetonChecksums | None, np.ndarray | None]:
        """The .beton's per-sample checksums and the stored values (None, None for a .beton written before them)."""
        listed = info.get("sample_checksums")
        if not listed:
            if str(self.beton) not in _WARNED:
                _WARNED.add(str(self.beton))
                log.warning(
                    "%s: no per-sample checksums (written before they existed): samples are decoded unverified; "
                    "prepare it again with --overwrite to add them",
                    self.beton,
                )
            return None, None
        path = self.beton.with_name(listed["file"])
        if not path.is_file():
            raise DataError(
                f"{path}: the checksums {manifest} lists are missing (prepare again with --overwrite)"
            )
        expected = np.load(path, allow_pickle=False)
        if len(expected) != self.num_samples_total:
            raise DataError(f"{path}: {len(expected)} checksums for {self.num_samples_total} samples")
        return BetonChecksums(self.beton), expected

    def _bad(self, pos: int, reason: str) -> BadSampleError:
        split = str(self.info["split"])
        origin = f"{self.beton}: sample #{pos} of split {split!r}"
        return BadSampleError(origin, reason, shard=str(self.beton), key=f"#{pos}", split=split)

    def _check(self, pos: int) -> BadSampleError | None:
        got, want = self._sums.crc(pos), int(self._expected[pos])
        if got == want:
            return None
        return self._bad(pos, f"crc32 {got:08x} differs from the stored {want:08x} (corrupt .beton)")

    def _verified(self, x: torch.Tensor, label: torch.Tensor, index: torch.Tensor, positions: np.ndarray):
        """The batch with its checksums checked; under "skip" a bad sample's rows are the next good sample's."""
        if self._sums is None:
            return x, label, index
        bad = []
        for i, p in enumerate(positions):
            if (error := self._check(int(p))) is not None:
                self.bad_policy.skip(error)  # raises under "raise" and past the cap
                bad.append(i)
        if not bad:
            return x, label, index
        good = [i for i in range(len(positions)) if i not in bad]
        if not good:
            raise DataError(
                f"{self.beton}: every sample of a batch is bad ({len(bad)}); nothing to replace them with"
            )
        x, label, index = x.clone(), label.clone(), index.clone()
        for i in bad:
            j = next((g for g in good if g > i), good[0])
            x[i], label[i], index[i] = x[j], label[j], index[j]
        return x, label, index

    def _pipelines(self) -> dict[str, list]:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.ndarray import NDArrayDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

        label = [IntDecoder(), ToTensor(), Squeeze(-1)]
        pipes: dict[str, list] = {"label": label, "index": [IntDecoder(), ToTensor(), Squeeze(-1)]}
        if self.info["kind"] == "image":
            size = self.image_size
            if self.train and self.pad_crop:  # the whole image at `size`; the padded crop and flip in _images
                ops = [CenterCropRGBImageDecoder(size, ratio=1.0)]
            elif self.train:
                ops = [RandomResizedCropRGBImageDecoder(size, scale=self.crop_scale)]
                ops += [RandomHorizontalFlip()] if self.flip else []
            else:
                ops = [CenterCropRGBImageDecoder(size, ratio=self.eval_crop_ratio)]
            # uint8 out, normalized by torch into a new tensor: on a CPU 1.6x faster than FFCV's NormalizeImage
            # plus the copy its reused output buffers would need; batches stay on the CPU (the engine moves them)
            pipes["image"] = [*ops, ToTensor(), ToTorchImage(channels_last=False)]
        else:
            pipes["volume"] = [NDArrayDecoder(), ToTensor()]
        return pipes

    def _ffcv_loader(self, order: np.ndarray):
        from ffcv.loader import Loader as FLoader
        from ffcv.loader import OrderOption

        if self._loader is None:
            self._loader = FLoader(
                str(self.beton),
                batch_size=self.batch_size,
                num_workers=max(1, self.workers),
                order=OrderOption.SEQUENTIAL,
                indices=order,
                pipelines=self._pipelines(),
                drop_last=False,
                batches_ahead=self.batches_ahead,
            )
        loader = self._loader
        # sequential traversal returns loader.indices; point it at this epoch's positions
        loader.indices = loader.traversal_order.indices = order
        loader.first_traversal_order = order
        return loader

    def _iter_raw(self, batches: list[np.ndarray], first: int) -> Iterator[dict[str, Any]]:
        if not batches:
            return
        order = np.concatenate(batches).astype(np.uint64)
        loader = self._ffcv_loader(order)
        epoch = self.epoch
        image = self.info["kind"] == "image"
        it = iter(loader)
        try:
            for j, b in enumerate(batches):
                x, label, index = self._verified(*self._next(it, b), b)
                if self.info["kind"] == "volume" and self.info["dtype"] == "float16":
                    x = x.view(torch.float16)  # stored as uint16 bit patterns (numba has no float16)
                # FFCV reuses its batch buffers: every tensor handed out is a new one (normalize makes the input's)
                keys = self.batch_keys(
                    first + j, epoch
                )  # each sample's augmentation key (its copy's, with repeats)
                x = self._images(x, keys, epoch) if image else self._volumes(x, keys, epoch)
                yield {"input": x, "label": label.clone(), "index": index.clone()}
        finally:
            it.close()  # stop FFCV's reader thread when an epoch is left early (resume, benchmarks)

    def _images(self, x: torch.Tensor, keys: np.ndarray, epoch: int) -> torch.Tensor:
        """The decoded uint8 batch, gray as one channel, with the padded random crop and flip (pad_crop), RandAugment,
        then 3-Augment and colour jitter, seeded per sample key (as the webdataset backend draws them) when asked
        for; in torch, in this process."""
        x = x[:, :1] if self.channels == 1 else x  # gray data is stored as 3 equal channels
        if self.pad_crop:  # the webdataset backend's draws: the sample's first, from (seed, epoch, key)
            pad, flip = self.pad_crop, self.flip
            rngs = [np.random.default_rng([self.seed, epoch, int(k)]) for k in keys]
            x = self._per_image(
                lambda img, rng: T.padded_random_crop(img, pad, T.pad_crop_draws(rng, pad, flip)), x, rngs
            )
        if self.randaugment is not None:
            rngs = [RA.sample_rng(self.seed, epoch, int(k)) for k in keys]
            x = self._per_image(lambda img, rng: RA.rand_augment(img, *self.randaugment, rng), x, rngs)
        if not self.three_augment and self.color_jitter <= 0:
            return x
        three, jitter = self.three_augment, self.color_jitter
        rngs = [T.augment_rng(self.seed, epoch, int(k)) for k in keys]
        return self._per_image(
            lambda img, rng: T.pixel_augment(img, rng, three=three, jitter=jitter), x, rngs
        )

    def _per_image(self, fn: Callable, x: torch.Tensor, rngs: list) -> torch.Tensor:
        """fn(image, rng) for each image, stacked; on `workers` threads when there are several (each image has its
        own generator, so the result is the same bits whichever thread runs it)."""
        if self.workers <= 1 or len(x) < 2:
            return torch.stack([fn(img, rng) for img, rng in zip(x, rngs)])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ffcv-augment")
        return torch.stack(list(self._pool.map(fn, x, rngs)))

    def _volumes(self, x: torch.Tensor, keys: np.ndarray, epoch: int) -> torch.Tensor:
        """transforms.py's crop and flip of each volume, seeded per sample key like the webdataset backend."""
        vols = [
            T.volume_transform(
                v,
                self.image_size,
                self.train,
                np.random.default_rng([self.seed, epoch, int(k)]),
                eval_crop_ratio=self.eval_crop_ratio,
                flip=self.flip,
            )
            for v, k in zip(x, keys)
        ]
        return torch.stack(vols)

    def _next(self, it, positions: np.ndarray):
        """next(it), but an FFCV reader thread that died (it swallows the error into a thread traceback and
        would leave the caller waiting forever) becomes a DataError, or the BadSampleError of the batch's first
        sample that fails its checksum (FFCV's compiled pipeline cannot replace it: this ends the epoch even
        under "skip")."""
        q = it.output_queue
        with q.not_empty:
            while not q._qsize():
                q.not_empty.wait(0.5)
                if not q._qsize() and not it.is_alive():
                    error = _THREAD_ERRORS.pop(it.ident, None)
                    for p in positions if self._sums is not None else ():
                        if (bad := self._check(int(p))) is not None:
                            raise bad from error
                    raise DataError(
                        f"{self.beton}: FFCV's reader thread stopped"
                        + (f" ({type(error).__name__}: {error})" if error else " (see the traceback above)")
                    ) from error
        return next(it)


_THREAD_ERRORS: dict[int | None, BaseException] = {}


def _record_thread_errors() -> None:
    """Keep the exception of a failed FFCV EpochIterator thread so _next can report it (chains the old hook)."""
    previous = threading.excepthook
    if getattr(previous, "_pipelines_ffcv", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "EpochIterator" and args.thread is not None:
            _THREAD_ERRORS[args.thread.ident] = args.exc_value
        previous(args)

    hook._pipelines_ffcv = True  # type: ignore[attr-defined]
    threading.excepthook = hook
