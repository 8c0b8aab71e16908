"""`data.access: stream` for the DALI backend: DALI's own `fn.readers.webdataset` reads the tars through the
index files the writer makes and hands the bytes to the decoder without Python in between.

Per rank and epoch a pipeline is built with `shard_id`/`num_shards` (DALI's contiguous split of the samples;
shard (rank + epoch) % world_size in training, so each rank sees another part each epoch, `stick_to_shard`),
`random_shuffle` with an `initial_fill` buffer (seeded per run, epoch and rank) and `pad_last_batch`, and run for
exactly `len(loader)` batches: (samples // world_size) // batch_size in training on every rank; in evaluation the
rank's shard, its padded last batch trimmed to the real samples. The decode and augmentation graph is the indexed
DALI loader's (`DALILoader._image_graph`/`_volume_graph`), the JPEG decode `mixed` (nvJPEG) on a GPU.

Resume: the pipeline of the saved epoch is rebuilt with the same seed and shard and the batches already consumed
are run again and dropped, so the resumed stream is the same as the uninterrupted one (its shuffle included),
at the cost of decoding those batches again. The reader checks no per-sample crc32 and cannot skip a bad sample:
DALI's error ends the epoch (bad_samples="skip" is refused).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.errors import DataError
from pipelines.loaders.common import Loader
from pipelines.loaders.dali import DALILoader, _queue_depth, _use_gpu, return_pipeline, take_pipeline
from pipelines.shards.manifest import MANIFEST, read_manifest

log = logging.getLogger(__name__)


class DALIStreamLoader(DALILoader):
    """Webdataset shards -> DALI `readers.webdataset` -> decode/augment -> batches (on the pipeline's device)."""

    access = "stream"

    def __init__(
        self,
        split_dir: str | os.PathLike,
        *,
        device: str | None = None,
        shuffle_buffer: int = 1000,
        verify: bool = False,
        prefetch_queue_depth: int = 2,
        **kwargs: Any,
    ):
        import nvidia.dali  # noqa: F401  (fail here, clearly, when DALI is not installed)

        split_dir = Path(split_dir)
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: DALI's webdataset reader needs local shards and index files")
        manifest = read_manifest(split_dir / MANIFEST)
        if kwargs.get("bad_samples", "raise") != "raise":
            raise ValueError(
                "bad_samples='skip' with the DALI stream: DALI's reader cannot drop a sample inside its pipeline; "
                "use data.access=indexed (it replaces bad samples) or data.bad_samples=raise"
            )
        Loader.__init__(self, manifest, **kwargs)
        if self.repeated_aug > 1:
            raise ValueError(
                f"repeated_aug={self.repeated_aug} with the DALI stream: its reader has no per-position order to "
                "repeat; use data.access=indexed for repeated augmentation"
            )
        self.split_dir = split_dir
        self.tars = [str(split_dir / s["url"]) for s in manifest["shardlist"]]
        self.indices = [str(split_dir / s["dali_index"]) for s in manifest["shardlist"]]
        self.ext = manifest["encoding"]
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.gpu = _use_gpu(device)
        self.prefetch_queue_depth = _queue_depth(prefetch_queue_depth)
        self._pipe = None

    # ---- sizes ---------------------------------------------------------------------------------------
    def _shard(self, epoch: int) -> int:
        return (self.rank + epoch) % self.world_size if self.train else self.rank

    def _rank_samples(self) -> int:
        n, w = self.num_samples_total, self.world_size
        if self.train and self.drop_last:
            return n // w
        s = self._shard(self.epoch)
        return n * (s + 1) // w - n * s // w  # DALI's contiguous shard

    def positions(self, epoch: int | None = None) -> np.ndarray:
        raise NotImplementedError("a stream has no per-position order; see num_samples and len()")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "access": "stream"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("access") != "stream":
            raise ValueError("cannot resume a stream from an indexed loader's state (data.access differs)")
        super().load_state_dict(state)
        log.info(
            "resuming DALI stream %s/%s at epoch %d: its reader restarts from shard %d with the same seed and "
            "drops the %d batches already used (decoded again)",
            self.info.get("name"), self.info.get("split"), self.epoch, self._shard(self.epoch), self._skip,
        )  # fmt: skip

    # ---- pipeline ------------------------------------------------------------------------------------
    def _pipe_key(self) -> tuple:
        return (*super()._pipe_key(), self.rank, self.world_size)

    def _pipe_seed(self) -> int:
        return (self.seed * 1000003 + self.epoch * 7919 + self.rank) % (2**31)

    def _graph(self):
        from nvidia.dali import fn, types

        data, cls, idx = fn.readers.webdataset(
            paths=self.tars,
            index_paths=self.indices,
            ext=[self.ext, "cls", "idx"],
            dtypes=[types.UINT8, types.UINT8, types.UINT8],
            missing_component_behavior="error",
            shard_id=self._shard(self.epoch),
            num_shards=self.world_size,
            stick_to_shard=True,
            random_shuffle=self.train and self.shuffle,
            initial_fill=self.shuffle_buffer,
            pad_last_batch=True,
            seed=self._pipe_seed(),
            name="Reader",
        )
        if self.info["kind"] == "image":
            return self._image_graph(data), cls, idx
        vol = fn.reshape(fn.decoders.numpy(data), layout="CDHW")
        return self._volume_graph(vol), cls, idx

    def _iter_raw(self, batches: list[np.ndarray], first: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError  # iteration is by stream, see __iter__

    def _run(self, real: int) -> dict[str, Any]:
        """One pipeline run as a raw batch, trimmed to the `real` samples (the rest pads the last batch)."""
        out, cls, idx = self._pipe.run()
        labels = torch.tensor([int(bytes(np.asarray(cls[j]))) for j in range(real)], dtype=torch.int64)
        index = torch.tensor([int(bytes(np.asarray(idx[j]))) for j in range(real)], dtype=torch.int64)
        x = self._to_torch(out)[:real]
        return {"input": x, "label": labels, "index": index, "normalized": self._normalizes}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, total, rank_samples = self.epoch, len(self), self._rank_samples()
        first = min(self._skip, total)
        self._skip, self._consumed = 0, first
        self._pipe = None
        # training: a fresh reader per epoch (its shard, seed and position); evaluation reads the same shard in the
        # same order every time: an idle pipeline left at the shard's start by a completed epoch is reused
        self._pipe = (None if self.train else take_pipeline(self._pipe_key())) or self._build()
        try:
            for _ in range(first):  # resume: the same stream, the used batches run again and dropped
                self._pipe.run()
            for i in range(first, total):
                real = min(self.batch_size, rank_samples - i * self.batch_size)
                batch = self._finish(self._run(real), epoch, i)
                self._consumed = i + 1
                yield batch
        except RuntimeError as exc:
            self._pipe = None
            raise DataError(
                f"{self.split_dir}: DALI's webdataset reader failed in epoch {epoch}: {exc}"
            ) from exc
        if not self.train:  # read to its end: the reader is back at its shard's start
            return_pipeline(self._pipe_key(), self._pipe)
            self._pipe = None
        if self.epoch == epoch and self._consumed >= total:
            self.epoch, self._consumed = epoch + 1, 0
