"""What every backend shares: the epoch's sample order per rank, resume state, and batch finishing.

Order: one permutation of the split per (seed, epoch), the same on every rank; rank r takes every
world_size-th position from r, so ranks are disjoint and together cover the split (training drops
the last `n % world_size` positions of the permutation so every rank has the same number of batches).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from pipelines import transforms as T
from pipelines.loaders.bad_samples import DEFAULT_MAX_BAD_SAMPLES, BadSamplePolicy
from pipelines.loaders.repeated import repeated_positions
from pipelines.randaugment import parse_randaugment

log = logging.getLogger(__name__)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; then an initialized torch.distributed group; then RANK/WORLD_SIZE; then (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank = int(os.environ.get("RANK", 0)) if rank is None else rank
            world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
    return int(rank), int(world_size)


def epoch_positions(
    n: int, *, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool, drop_uneven: bool
) -> np.ndarray:
    """Positions (0..n-1 in the split) that `rank` reads in `epoch`, in order."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if drop_uneven:
        order = order[: (n // world_size) * world_size]
    return order[rank::world_size]


class Loader:
    """Base class of the three backends: `for batch in loader` yields {"input", "label", "index"}.

    `input` is float32 (B, C, ...) normalized with the data set's mean/std, `label` int64 (B,),
    `index` int64 (B,) the sample's index in the source split (identical across backends). In training
    with mixup, cutmix or label_smoothing, the batch also holds `target`, float32 (B, num_classes) soft
    labels (`label` stays the unmixed class).

    Finishing (normalizing, mixing) runs where `set_device` says, the CPU by default: on a GPU the raw
    batch (uint8 images: a quarter of float32's bytes) is copied there first, non-blocking from pinned
    memory, and `input` and `target` are made there; `label` and `index` stay on the CPU.

    Bad samples (unreadable, failing their checksum, undecodable) follow `bad_samples` ("raise" or "skip",
    loaders/bad_samples.py); `loader.bad_samples` is the number replaced so far on this rank (int, cumulative
    over epochs, workers' replacements included, kept in state_dict across a resume).
    """

    backend = ""
    device = torch.device("cpu")  # where batches are finished (set_device)
    _stats: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None  # mean and std there

    def __init__(
        self,
        info: dict[str, Any],
        *,
        batch_size: int,
        train: bool,
        image_size: int | tuple[int, ...] | None,
        rank: int,
        world_size: int,
        seed: int,
        drop_last: bool | None = None,
        shuffle: bool | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        label_smoothing: float = 0.0,
        eval_crop_ratio: float | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        pad_crop: int = 0,
        workers: int | None = None,
        randaugment: list[int] | tuple[int, int] | None = None,
        repeated_aug: int = 1,
        three_augment: bool = False,
        color_jitter: float = 0.0,
        flip: bool = True,
        bad_samples: str = "raise",
        max_bad_samples: int = DEFAULT_MAX_BAD_SAMPLES,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.info = info
        self.num_samples_total = int(info["num_samples"])
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.spatial_rank = int(info["spatial_rank"])
        size = tuple(info["native_size"]) if image_size is None else image_size
        self.image_size = T.as_size(size, self.spatial_rank)
        self.channels = int(info["channels"])
        self.num_classes = int(info["num_classes"])
        self.rank, self.world_size = rank, world_size
        self.seed = int(seed)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        # the Beta(alpha, alpha) parameters of mixup and cutmix; 0: off
        self.mixup, self.cutmix = float(mixup), float(cutmix)
        self.label_smoothing = float(label_smoothing)
        self._crop_options(eval_crop_ratio, crop_scale, pad_crop, flip)
        self._augment_options(randaugment, repeated_aug, three_augment, color_jitter)
        self.workers = min(4, os.cpu_count() or 1) if workers is None else int(workers)
        self.mean = torch.tensor(info["mean"], dtype=torch.float32)
        self.std = torch.tensor(info["std"], dtype=torch.float32)
        self.epoch = 0
        self._skip = 0  # batches to skip at the start of the next iteration (resume)
        self._consumed = 0
        self._positions_cache: tuple[int, np.ndarray] | None = None
        where = f"{info.get('name')}/{info.get('split')} ({self.backend}, rank {rank})"
        self.bad_policy = BadSamplePolicy(bad_samples, max_bad_samples, where)

    @property
    def bad_samples(self) -> int:
        """Bad samples replaced so far on this rank (policy "skip"; always 0 under "raise")."""
        return self.bad_policy.count

    @property
    def bad_sample_policy(self) -> str:
        return self.bad_policy.policy

    def _crop_options(
        self, eval_crop_ratio: float | None, crop_scale: tuple[float, float], pad_crop: int, flip: bool
    ) -> None:
        """Evaluation's center crop; training's random-resized crop of `crop_scale` of the area, or with `pad_crop`
        > 0 (2D images only) torchvision's RandomCrop(size, padding=pad_crop) instead; random left-right flips in
        training (off where labels know left from right)."""
        self.eval_crop_ratio = (
            T.default_crop_ratio(min(self.image_size)) if eval_crop_ratio is None else float(eval_crop_ratio)
        )
        self.crop_scale = tuple(crop_scale)
        self.flip = bool(flip) and self.train
        if isinstance(pad_crop, bool) or int(pad_crop) != pad_crop or pad_crop < 0:
            raise ValueError(
                f"pad_crop must be an integer >= 0 (pixels of zero padding; 0: off), got {pad_crop!r}"
            )
        self.pad_crop = int(pad_crop) if self.train else 0
        if self.pad_crop and not self._is_2d_image():
            raise ValueError(
                f"pad_crop is defined on 2D images ({self.backend} backend); {self.info.get('name')} holds "
                f"{self.info.get('kind')}s with {self.spatial_rank} spatial axes: leave pad_crop at 0 for it"
            )

    def _augment_options(
        self, randaugment: list[int] | tuple[int, int] | None, repeats: int, three: bool, jitter: float
    ) -> None:
        """RandAugment, repeated augmentation (copies per sample, loaders/repeated.py), 3-Augment and colour jitter
        (transforms.py): each a ValueError naming it when wrong; evaluation uses none of them."""
        self.randaugment = self._randaugment(randaugment)
        if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
            raise ValueError(
                f"repeated_aug must be an integer >= 1 (copies of each sample per epoch), got {repeats!r}"
            )
        if not 0 <= float(jitter) <= 1:
            raise ValueError(
                f"color_jitter must be in [0, 1] (brightness/contrast/saturation strength), got {jitter!r}"
            )
        self.repeated_aug = int(repeats) if self.train else 1
        self.three_augment = bool(three) and self.train
        self.color_jitter = float(jitter) if self.train else 0.0
        if (self.three_augment or self.color_jitter > 0) and not self._is_2d_image():
            name = "three_augment" if self.three_augment else "color_jitter"
            raise ValueError(
                f"{name} is defined on 2D images ({self.backend} backend); {self.info.get('name')} holds "
                f"{self.info.get('kind')}s with {self.spatial_rank} spatial axes: leave {name} off for it"
            )

    def _is_2d_image(self) -> bool:
        return self.info.get("kind") == "image" and self.spatial_rank == 2

    def _randaugment(self, randaugment: list[int] | tuple[int, int] | None) -> tuple[int, int] | None:
        """(num_ops, magnitude) in training, None in evaluation (which never augments); a ValueError for a
        bad setting, and for training on 3D volumes and video, which have no RandAugment."""
        ra = parse_randaugment(randaugment)
        if ra is not None and self.train and not self._is_2d_image():
            name = self.info.get("name", "this data set")
            raise ValueError(
                f"randaugment is defined on 2D images ({self.backend} backend); {name} holds "
                f"{self.info.get('kind')}s with {self.spatial_rank} spatial axes (3D volumes and video have no "
                "RandAugment); leave randaugment unset (None) for it"
            )
        return ra if self.train else None

    # ---- order and state -------------------------------------------------------------------
    def positions(self, epoch: int | None = None) -> np.ndarray:
        """Positions in the split this rank reads in `epoch` (default: the current one); cached per epoch."""
        epoch = self.epoch if epoch is None else epoch
        cached = self._positions_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        where = dict(epoch=epoch, seed=self.seed, rank=self.rank, world_size=self.world_size)
        if self.repeated_aug > 1:  # training only: each sample of the permutation read repeated_aug times
            pos = repeated_positions(self.num_samples_total, **where, repeats=self.repeated_aug)
        else:
            pos = epoch_positions(
                self.num_samples_total, **where, shuffle=self.shuffle, drop_uneven=self.drop_last
            )
        self._positions_cache = (epoch, pos)
        return pos

    def sample_keys(self, epoch: int | None = None) -> np.ndarray:
        """The augmentation key of each sample positions(epoch) lists, which seeds its crop, flip, RandAugment and
        colour draws with (seed, epoch, key): the position itself; with repeated augmentation the sample's slot in
        the epoch's repeated order (rank + world_size * i), so every copy of a sample is augmented differently."""
        pos = self.positions(epoch)
        if self.repeated_aug == 1:
            return pos
        return self.rank + self.world_size * np.arange(len(pos), dtype=np.int64)

    def batch_keys(self, batch_index: int, epoch: int | None = None) -> np.ndarray:
        """sample_keys of batch `batch_index` of `epoch` (default: the current one)."""
        return self.sample_keys(epoch)[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]

    def _rank_samples(self) -> int:
        """Samples this rank reads per epoch, before batching (the stream loaders count them otherwise)."""
        return len(self.positions())

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n = self._rank_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank (after dropping an incomplete last batch in training)."""
        n = self._rank_samples()
        return (n // self.batch_size) * self.batch_size if self.drop_last else n

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows; a pending resume for another epoch is dropped."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Position to resume from: the epoch and the number of batches already consumed in it."""
        return {
            "backend": self.backend,
            "epoch": self.epoch,
            "batches": self._consumed if self._skip == 0 else self._skip,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "repeated_aug": self.repeated_aug,
            "bad_samples": self.bad_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration runs epoch state["epoch"] without its first state["batches"] batches."""
        for key in ("seed", "world_size", "batch_size", "repeated_aug"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: the saved loader state has {key}={state[key]}, this loader {getattr(self, key)}"
                )
        self.epoch = int(state["epoch"])
        self._skip = int(state["batches"])
        self._consumed = self._skip
        self.bad_policy.count = int(state.get("bad_samples", 0))

    # ---- iteration -------------------------------------------------------------------------------
    def _batches(self) -> list[np.ndarray]:
        pos = self.positions()
        bs = self.batch_size
        return [pos[i : i + bs] for i in range(0, len(self) * bs, bs)]

    def _iter_raw(self, batches: list[np.ndarray], first: int) -> Iterator[dict[str, torch.Tensor]]:
        """Backend part: yield per batch {"input": uint8/float tensor, "label", "index", "normalized": bool}."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = self._batches()
        first = min(self._skip, len(batches))
        self._skip = 0
        self._consumed = first
        epoch = self.epoch
        for i, raw in enumerate(self._iter_raw(batches[first:], first), start=first):
            batch = self._finish(raw, epoch, i)
            self._consumed = i + 1  # counted when handed out: a checkpoint taken after using it skips it
            yield batch
        if self.epoch == epoch and self._consumed >= len(batches):
            self.epoch = epoch + 1  # an epoch read to its end moves on, like FFCV; set_epoch overrides
            self._consumed = 0

    def set_device(self, device: torch.device | str) -> None:
        """Finish batches on `device` (the model's): raw batch there first, then normalize and mix there."""
        self.device = torch.device(device)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """`x` on the finishing device, as it is (uint8 stays uint8); to a GPU from pinned memory, non-blocking."""
        if x.device == self.device or self.device.type == "cpu":
            return x
        if self.device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
            x = x.pin_memory()  # (the caching host allocator keeps it until the copy is done)
        return x.to(self.device, non_blocking=True)

    def _stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stats is None or self._stats[0] != device:
            self._stats = (device, self.mean.to(device), self.std.to(device))
        return self._stats[1], self._stats[2]

    def _finish(self, raw: dict[str, Any], epoch: int, batch_index: int) -> dict[str, torch.Tensor]:
        """The raw batch to the finishing device first, then normalized and mixed there."""
        x = self._to_device(raw["input"])
        if not raw.get("normalized", False):
            x = T.normalize(x, *self._stats_on(x.device))
        batch = {"input": x, "label": raw["label"].to(torch.int64), "index": raw["index"].to(torch.int64)}
        if self.train and (self.mixup > 0 or self.cutmix > 0 or self.label_smoothing > 0):
            rng = np.random.default_rng([self.seed, epoch, batch_index, self.rank, 7])
            batch["input"], batch["target"] = T.mix_batch(
                x,
                self._to_device(batch["label"]),  # the soft targets are made where the inputs are
                self.num_classes,
                rng,
                mixup=self.mixup,
                cutmix=self.cutmix,
                label_smoothing=self.label_smoothing,
            )
        return batch

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.info['name']}/{self.info['split']}, samples={self.num_samples_total}, "
            f"batch_size={self.batch_size}, train={self.train}, image_size={self.image_size}, "
            f"rank={self.rank}/{self.world_size})"
        )
