"""The training-time policy for samples that fail to read, verify or decode (config: data.bad_samples,
data.max_bad_samples).

"raise" (the default): the BadSampleError, naming shard, key and split, ends the iteration.
"skip": the bad sample is replaced by a good one of the same shard (the next one, deterministically), so every
batch keeps its size and every rank steps the same number of times; each replacement is counted (in memory
shared with forked loader workers, so the main process sees their counts at once) and logged as a warning
naming the sample (by the main process: a worker hands its messages over with the batch, see `drain`); once more than `max_bad_samples` were replaced on this rank, TooManyBadSamplesError ends it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pipelines.errors import BadSampleError, DataError, TooManyBadSamplesError

log = logging.getLogger(__name__)
POLICIES = ("raise", "skip")
DEFAULT_MAX_BAD_SAMPLES = 100
R = TypeVar("R")


class BadSamplePolicy:
    """What a loader does with a BadSampleError, and how many it has replaced (cumulative, this rank)."""

    def __init__(
        self, policy: str = "raise", max_bad_samples: int = DEFAULT_MAX_BAD_SAMPLES, where: str = ""
    ):
        if policy not in POLICIES:
            raise ValueError(f"bad_samples={policy!r}: expected one of {POLICIES}")
        if int(max_bad_samples) < 0:
            raise ValueError(f"max_bad_samples={max_bad_samples!r}: must be >= 0")
        self.policy = policy
        self.max_bad_samples = int(max_bad_samples)
        self.where = where
        self._count = mp.get_context("fork").Value("q", 0)  # shared with the workers forked from here
        self._pid = os.getpid()
        self._pending: list[str] = []  # a worker's warnings, not yet handed to the main process

    @property
    def count(self) -> int:
        return int(self._count.value)

    @count.setter
    def count(self, value: int) -> None:
        self._count.value = int(value)

    def __getstate__(self) -> dict[str, Any]:  # a pickled copy (spawned process, deepcopy) counts on its own
        state = dict(self.__dict__)
        state["_count"] = self.count
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        count = state.pop("_count")
        self.__dict__.update(state)
        self._count = mp.get_context("fork").Value("q", count)

    def skip(self, error: BadSampleError) -> None:
        """Under "raise" re-raise `error`; under "skip" count and log it, and raise past the cap."""
        if self.policy == "raise":
            raise error
        with self._count.get_lock():
            self._count.value += 1
            n = self._count.value
        if n > self.max_bad_samples:
            raise TooManyBadSamplesError(
                f"{self.where}: {n} bad samples on this rank, more than max_bad_samples={self.max_bad_samples} "
                f"(data.max_bad_samples); the last: {error}. The prepared data is damaged: check it "
                "(verify=True compares the shards' sha256) and prepare it again"
            ) from error
        message = f"{self.where}: bad sample {n} of at most {self.max_bad_samples} replaced: {error}"
        if os.getpid() == self._pid:
            log.warning("%s", message)
        else:
            self._pending.append(message)

    def drain(self) -> list[str]:
        """In a worker process: the warnings since the last call, to travel with the batch to `report`."""
        out, self._pending = self._pending, []
        return out

    def report(self, messages: list[str]) -> None:
        """In the main process: log the warnings a worker handed over."""
        for message in messages:
            log.warning("%s", message)

    def read(self, load: Callable[[int], R], pos: int, substitutes: Callable[[int], Sequence[int]]) -> R:
        """load(pos); under "skip" a bad sample is replaced by the first good one of substitutes(pos)."""
        try:
            return load(pos)
        except BadSampleError as exc:
            self.skip(exc)
            first = exc
        for alt in substitutes(pos):
            try:
                return load(alt)
            except BadSampleError as exc:
                self.skip(exc)
        raise DataError(f"no good sample found near the bad one to replace it: {first}") from first
