"""Errors raised on bad input: each one names the file, key or value at fault."""

from __future__ import annotations


class DataError(RuntimeError):
    """A data set, shard or manifest cannot be used as given (the message says which and why)."""


class BadSampleError(DataError):
    """One sample cannot be read, verified or decoded; the message names where it is (for a prepared split: the
    shard file, the sample's key and the split). In preparation `--skip-bad` turns these into a logged count; in
    training the loader's `bad_samples="skip"` policy does (data.bad_samples in the config).

    `BadSampleError(message)` (one argument) is accepted too, so the error survives torch's DataLoader, which
    rebuilds a worker's exception from its formatted text.
    """

    def __init__(
        self,
        origin: str,
        reason: str | None = None,
        *,
        shard: str | None = None,
        key: str | None = None,
        split: str | None = None,
    ):
        super().__init__(origin if reason is None else f"{origin}: {reason}")
        self.origin = origin
        self.reason = reason
        self.shard, self.key, self.split = shard, key, split

    def __reduce__(self):  # rebuilt from its fields when it crosses a process boundary
        return (_rebuild, (type(self), self.origin, self.reason, self.shard, self.key, self.split))


def _rebuild(cls, origin, reason, shard, key, split):
    return cls(origin, reason, shard=shard, key=key, split=split)


class TooManyBadSamplesError(DataError):
    """More bad samples were skipped on one rank than `max_bad_samples` allows: the data is damaged beyond
    what skipping should hide."""
