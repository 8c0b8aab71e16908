"""`data.access: stream` for the webdataset backend: the webdataset library's own pipeline reads the shards in
order, from local paths or any URL webdataset opens (`pipe:` commands, http(s), brace-expanded lists).

Per worker: `wds.DataPipeline(shards -> samples -> wds.shuffle(buffer) -> wds.map(decode) -> wds.batched)` under a
`wds.WebLoader` (torch DataLoader workers), the samples from webdataset's url_opener and group_by_keys with
tar_stream.py's member reader between them (webdataset's tarfile-based one cost as much as decoding a small
sample); the main process rebatches to the exact batch size and stops after `len(loader)` batches, the same
number on every rank.

Shard plan (our own splitter, deterministic so a run can resume; webdataset's `split_by_node` reads the
environment and cannot): each epoch one permutation of the shards from (seed, epoch), shared by all ranks; rank r
takes every world_size-th shard from r, its worker w every workers-th of those. When the shards do not divide
evenly (unequal samples per rank), each rank instead draws shards with replacement (seeded by seed, epoch, rank:
webdataset's `resampled` epochs) and every rank stops at the same fixed length, (samples // world_size) //
batch_size batches. Evaluation reads every shard in order on every rank and keeps every world_size-th sample, so
ranks are disjoint and cover the split as in the indexed mode.

Resume: `state_dict()` holds the epoch, the batches handed out, the plan positions of shards wholly handed out and,
for shards partly handed out, the source indices already used; `load_state_dict` rebuilds the epoch's plan, drops
the finished shards and filters the used samples out of the partial ones, so a resumed epoch repeats and skips no
shard (and no sample). The shuffle buffer's contents and order are not restored: the remaining samples come in a
different order than they would have without the interruption.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from pipelines import randaugment as RA
from pipelines.errors import BadSampleError, DataError
from pipelines.loaders.common import Loader
from pipelines.loaders.tar_stream import tar_samples
from pipelines.shards.checksum import MEMBER, sample_crc32

log = logging.getLogger(__name__)
DEFAULT_SHUFFLE_BUFFER = 1000


# ---- where the shards are ---------------------------------------------------------------------------
def is_url(path: str | os.PathLike | None) -> bool:
    """A root or pattern webdataset opens itself (pipe:, http(s):, s3:, gs:, ...), not a local path."""
    return (
        path is not None
        and bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", str(path)))
        and not os.path.exists(path)
    )


def manifest_url(shard_url: str) -> str:
    """The manifest beside a shard: the shard's file name (the last `*.tar`) replaced by manifest.json."""
    found = list(re.finditer(r"[^/\s'\"]+\.tar\b", shard_url))
    if not found:
        raise DataError(f"{shard_url}: cannot find the shard's .tar name to locate manifest.json beside it")
    last = found[-1]
    return shard_url[: last.start()] + "manifest.json" + shard_url[last.end() :]


def split_source(
    root: str, dataset: str, split: str, urls: str | list[str] | None = None
) -> tuple[list[str], str]:
    """(shard URLs in manifest order, the manifest's URL) of a split: from `urls` (a brace pattern or a list;
    `{split}` is replaced by the split's name) or from root/dataset/webdataset/split."""
    from webdataset.shardlists import expand_urls

    from pipelines import paths
    from pipelines.shards.manifest import read_manifest_url

    if urls:
        pattern = [urls] if isinstance(urls, str) else list(urls)
        shards = [u for p in pattern for u in expand_urls(p.replace("{split}", split))]
        return shards, manifest_url(shards[0])
    base = str(root).rstrip("/") + f"/{dataset}/webdataset/{split}" if is_url(root) else None
    base = base or str(paths.webdataset_dir(root, dataset, split))
    manifest = read_manifest_url(f"{base}/manifest.json")
    return [f"{base}/{s['url']}" for s in manifest["shardlist"]], f"{base}/manifest.json"


def stream_info(root: str, dataset: str, splits: list[str], urls: str | None = None) -> dict[str, Any]:
    """pipelines.dataset_info for shards anywhere webdataset reads: from the splits' manifests alone."""
    from pipelines.prepare import INFO_KEYS
    from pipelines.shards.manifest import read_manifest_url

    manifests = {s: read_manifest_url(split_source(root, dataset, s, urls)[1]) for s in splits}
    first = manifests[splits[0]]
    info = {k: first[k] for k in INFO_KEYS}
    info["splits"] = {s: m["num_samples"] for s, m in manifests.items()}
    info["formats"] = ["webdataset"]
    return info


# ---- the plan: which shards each rank and worker reads ------------------------------------------------
def shard_plan(
    counts: list[int], *, epoch: int, seed: int, rank: int, world_size: int, train: bool, need: int = 0
) -> list[int]:
    """Shard numbers this rank reads in `epoch`, in order (a plan position is an index into this list).

    Training with an even split: its share of the epoch's shard permutation; otherwise (resampled) shards drawn
    with replacement until they hold `need` samples plus one more shard's worth. Evaluation: every shard in order.
    """
    n = len(counts)
    if not train:
        return list(range(n))
    if is_even(counts, world_size):
        return [int(s) for s in np.random.default_rng([seed, epoch]).permutation(n)[rank::world_size]]
    rng = np.random.default_rng([seed, epoch, rank, 17])
    plan: list[int] = []
    total, margin = 0, max(counts)
    while total < need + margin:
        plan.append(int(rng.integers(n)))
        total += counts[plan[-1]]
    return plan


def is_even(counts: list[int], world_size: int) -> bool:
    """Every rank gets the same number of samples whatever the shard permutation: equal shards dividing evenly."""
    return len(counts) % world_size == 0 and len(set(counts)) == 1


# ---- per-worker pipeline ------------------------------------------------------------------------------
class _Handler:
    """webdataset's error handler mapped to the bad-sample policy: a BadSampleError naming the shard (and the
    sample when known) is raised ("raise") or counted and skipped ("skip"; the rest of a broken tar is lost)."""

    def __init__(self, policy, split: str):
        self.policy, self.split = policy, split

    def __call__(self, exn: Exception) -> bool:
        if not isinstance(exn, BadSampleError):
            url = next((a for a in reversed(exn.args) if isinstance(a, str) and ".tar" in a), "a shard")
            err = BadSampleError(
                f"{url}: split {self.split!r}",
                f"webdataset cannot read it ({type(exn).__name__}: {exn.args[0] if exn.args else exn})",
                shard=url,
                split=self.split,
            )
            exn = err.with_traceback(exn.__traceback__)
        self.policy.skip(exn)
        return True


class _StreamDataset(torch.utils.data.IterableDataset):
    """One epoch of one rank: plan entries (plan position, url, used indices) split over the DataLoader's workers."""

    def __init__(self, loader: StreamLoader, entries: list[tuple[int, str, frozenset]], epoch: int):
        self.loader, self.entries, self.epoch = loader, entries, epoch

    def __iter__(self) -> Iterator[tuple]:
        import webdataset as wds

        lo = self.loader
        info = torch.utils.data.get_worker_info()
        w, k = (info.id, info.num_workers) if info is not None else (0, 1)
        handler = _Handler(lo.bad_policy, lo.split)
        stages: list[Any] = [functools.partial(self._samples, self.entries[w::k], handler)]
        if lo.train and lo.shuffle and lo.shuffle_buffer > 1:
            rng = random.Random(hash((lo.seed, self.epoch, lo.rank, w, "buffer")))
            stages.append(wds.shuffle(lo.shuffle_buffer, initial=lo.shuffle_buffer // 2, rng=rng))
        stages += [
            wds.map(self._decode, handler=handler),
            wds.batched(lo.batch_size, collation_fn=self._collate, partial=True),
        ]
        yield from wds.DataPipeline(*stages)

    def _samples(self, entries: list[tuple[int, str, frozenset]], handler: _Handler) -> Iterator[dict]:
        """The library's url_opener and group_by_keys over this worker's shards (tar members parsed by tar_stream:
        webdataset's tarfile-based parsing costs as much as decoding a small sample); each sample tagged with its
        plan position, the samples used before a resume (and, in evaluation, other ranks' samples) left out."""
        lo = self.loader
        for plan_pos, url, used in entries:
            start = lo.starts[lo.plan_shard(self.epoch, plan_pos)]
            for local, sample in enumerate(tar_samples([{"url": url}], handler)):
                if not lo.train and (start + local) % lo.world_size != lo.rank:
                    continue
                if used and _int(sample.get("idx"), -1) in used:
                    continue
                sample["__plan__"] = plan_pos
                yield sample

    def _decode(self, sample: dict) -> tuple:
        """(uint8 tensor, label, index, plan position): checksum verified, decoded and augmented per sample."""
        from pipelines.loaders.webdataset import load_image, load_volume

        lo = self.loader
        where = f"{sample.get('__url__')}: sample {sample.get('__key__')!r} of split {lo.split!r}"
        try:
            cls, idx, data = sample["cls"], sample["idx"], sample[lo.ext]
        except KeyError as exc:
            raise BadSampleError(where, f"it lacks the member {exc}", key=sample.get("__key__")) from None
        if MEMBER in sample:
            got = sample_crc32(cls, idx, data)
            if _int(sample[MEMBER], -1, 16) != got:
                raise BadSampleError(where, f"crc32 {got:08x} differs from the stored {sample[MEMBER][:8]!r}")
        label, index = _int(cls, None), _int(idx, None)
        if label is None or index is None:
            raise BadSampleError(where, f"its cls/idx members read {cls[:16]!r}/{idx[:16]!r}")
        rng = np.random.default_rng([lo.seed, self.epoch, index, 3])
        try:
            if lo.info["kind"] == "image":
                x = load_image(data, lo.channels, lo.image_size, lo.train, rng, crop_scale=lo.crop_scale,
                               eval_crop_ratio=lo.eval_crop_ratio, flip=lo.flip, pad_crop=lo.pad_crop)  # fmt: skip
                if lo.randaugment is not None:
                    x = RA.rand_augment(x, *lo.randaugment, RA.sample_rng(lo.seed, self.epoch, index))
            else:
                x = load_volume(
                    data, lo.image_size, lo.train, rng, eval_crop_ratio=lo.eval_crop_ratio, flip=lo.flip
                )
        except Exception as exc:
            raise BadSampleError(where, f"cannot decode it ({type(exc).__name__}: {exc})") from exc
        return x, label, index, sample["__plan__"]

    def _collate(self, items: list[tuple]) -> tuple:
        x = torch.stack([i[0] for i in items])
        ints = torch.tensor([i[1:] for i in items], dtype=torch.int64)
        return x, ints[:, 0], ints[:, 1], ints[:, 2], self.loader.bad_policy.drain()


def _int(data: Any, default: Any, base: int = 10) -> Any:
    try:
        return int(data, base) if isinstance(data, (bytes, str)) else int(data)
    except (TypeError, ValueError):
        return default


# ---- the loader ------------------------------------------------------------------------------------------
class StreamLoader(Loader):
    """Webdataset shards streamed in order by the webdataset library (any URL it opens) -> batches."""

    backend = "webdataset"
    access = "stream"

    def __init__(
        self,
        shards: list[str],
        manifest: dict[str, Any],
        *,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        prefetch_factor: int = 4,
        **kwargs: Any,
    ):
        counts = [int(s["nsamples"]) for s in manifest["shardlist"]]
        if len(shards) != len(counts):
            raise DataError(
                f"{len(shards)} shard URLs for a split whose manifest lists {len(counts)} shards ({shards[0]} ...)"
            )
        super().__init__(manifest, **kwargs)
        self.urls, self.counts = list(shards), counts
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.ext, self.split = manifest["encoding"], str(manifest["split"])
        self.shuffle_buffer, self.prefetch_factor = int(shuffle_buffer), prefetch_factor
        self.resampled = self.train and not is_even(counts, self.world_size)
        self._plans: dict[int, list[int]] = {}
        self._used: dict[int, list[int]] = {}  # plan position -> indices handed out this epoch
        self._done: set[int] = set()  # plan positions finished before a resume in this epoch
        self._resume: tuple[int, set[int], dict[int, frozenset]] | None = None

    # ---- sizes ---------------------------------------------------------------------------------------
    def positions(self, epoch: int | None = None) -> np.ndarray:  # not a positional order: only the count
        raise NotImplementedError("a stream has no per-position order; see num_samples and len()")

    def _rank_samples(self) -> int:
        n, w = self.num_samples_total, self.world_size
        if not self.train:
            return len(range(self.rank, n, w))
        if self.resampled:
            return n // w
        return sum(self.counts[s] for s in self.plan(self.epoch))

    def plan(self, epoch: int) -> list[int]:
        if epoch not in self._plans:
            self._plans = {epoch: shard_plan(self.counts, epoch=epoch, seed=self.seed, rank=self.rank,
                                             world_size=self.world_size, train=self.train,
                                             need=len(self) * self.batch_size if self.resampled else 0)}  # fmt: skip
        return self._plans[epoch]

    def plan_shard(self, epoch: int, plan_pos: int) -> int:
        return self.plan(epoch)[plan_pos]

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        plan = self.plan(self.epoch)
        done = list(self._done) + [p for p, used in self._used.items() if len(used) >= self.counts[plan[p]]]
        partial = {str(p): sorted(u) for p, u in self._used.items() if len(u) < self.counts[plan[p]]}
        if self._resume is not None:  # not one batch handed out since the resume: keep what it restored
            done, partial = sorted(self._resume[1]), {str(p): sorted(u) for p, u in self._resume[2].items()}
        state.update(access="stream", shards_done=sorted(done), partial=partial)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("access") != "stream":
            raise ValueError("cannot resume a stream from an indexed loader's state (data.access differs)")
        done = {int(p) for p in state.get("shards_done", [])}
        partial = {int(p): frozenset(u) for p, u in state.get("partial", {}).items()}
        self._resume = (self.epoch, done, partial)
        log.info(
            "resuming stream %s/%s at epoch %d after %d batches: %d of %d planned shards done, %d partly read "
            "(%d of their samples used, left out); the shuffle buffer is not restored",
            self.info.get("name"), self.split, self.epoch, self._skip, len(done), len(self.plan(self.epoch)),
            len(partial), sum(len(u) for u in partial.values()),
        )  # fmt: skip

    # ---- iteration ---------------------------------------------------------------------------------
    def _entries(self, epoch: int) -> list[tuple[int, str, frozenset]]:
        plan = self.plan(epoch)
        done, partial = set(), {}
        if self._resume is not None and self._resume[0] == epoch:
            _, done, partial = self._resume
        self._used = {p: list(u) for p, u in partial.items()}
        self._done = set(done)
        return [(p, self.urls[s], partial.get(p, frozenset())) for p, s in enumerate(plan) if p not in done]

    def _web_loader(self, entries: list[tuple[int, str, frozenset]], epoch: int):
        import webdataset as wds

        workers = min(self.workers, len(entries))
        extra: dict[str, Any] = {}
        if workers > 0:
            extra = {"prefetch_factor": self.prefetch_factor, "multiprocessing_context": "fork"}
        return wds.WebLoader(
            _StreamDataset(self, entries, epoch),
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_worker_init,
            **extra,
        )

    def _rebatched(self, epoch: int, want: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """`want` batches of exactly batch_size (the last may be short in evaluation) from the workers' batches,
        whose shard ends leave partial ones; a training stream short of its length (bad samples skipped) is
        topped up from a fresh pass over the epoch's plan."""
        entries, parts, have, done = self._entries(epoch), [], 0, 0
        for attempt in range(3):
            for x, y, i, p, bad in self._web_loader(entries, epoch) if entries and done < want else ():
                self.bad_policy.report(bad)
                parts.append((x, y, i, p))
                have += len(y)
                while have >= self.batch_size and done < want:
                    out, parts = _cut(parts, self.batch_size)
                    have, done = have - self.batch_size, done + 1
                    yield out
                if done >= want:
                    return
            if not self.train or attempt == 2:
                break
            log.warning("%s/%s: the stream ran short (bad samples skipped); topping it up from its shards again",
                        self.info.get("name"), self.split)  # fmt: skip
            entries = [(p, self.urls[s], frozenset()) for p, s in enumerate(self.plan(epoch))]
        if parts and done < want:
            yield tuple(torch.cat([q[j] for q in parts]) for j in range(4))

    def _iter_raw(self, batches: list[np.ndarray], first: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError  # iteration is by stream, see __iter__

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, total = self.epoch, len(self)
        first = min(self._skip, total)
        self._skip, self._consumed = 0, first
        for i, (x, y, idx, plan_pos) in enumerate(self._rebatched(epoch, total - first), start=first):
            for p, j in zip(plan_pos.tolist(), idx.tolist()):
                self._used.setdefault(p, []).append(j)
            self._resume = None
            raw = {"input": x, "label": y, "index": idx}
            batch = self._finish(raw, epoch, i)
            self._consumed = i + 1
            yield batch
        if self.epoch == epoch and self._consumed >= total:
            self.epoch, self._consumed, self._used, self._done, self._resume = epoch + 1, 0, {}, set(), None

    def __repr__(self) -> str:
        return (
            f"StreamLoader({self.info['name']}/{self.split}, shards={len(self.urls)} from {self.urls[0]!r}, "
            f"samples={self.num_samples_total}, batch_size={self.batch_size}, train={self.train}, "
            f"resampled={self.resampled}, rank={self.rank}/{self.world_size})"
        )


def _cut(parts: list[tuple], size: int) -> tuple[tuple, list[tuple]]:
    """The first `size` samples of the queued batch parts, and the parts left (a full part passes uncopied)."""
    if len(parts[0][1]) == size:
        return parts[0], parts[1:]
    cat = [torch.cat([q[j] for q in parts]) for j in range(4)]
    out = tuple(c[:size] for c in cat)
    rest = [tuple(c[size:] for c in cat)] if len(cat[1]) > size else []
    return out, rest


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def build_stream_loader(
    root: str, dataset: str, split: str, urls: str | list[str] | None = None, **kwargs: Any
) -> StreamLoader:
    """The stream loader of a split: shard URLs and manifest from `urls` or root (local or a URL)."""
    from pipelines.shards.manifest import read_manifest_url

    shards, manifest = split_source(root, dataset, split, urls)
    return StreamLoader(shards, read_manifest_url(manifest), **kwargs)
