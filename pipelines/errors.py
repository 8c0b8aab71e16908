"""Errors raised on bad input: each one names the file, key or value at fault."""

from __future__ import annotations


class DataError(RuntimeError):
    """A data set, shard or manifest cannot be used as given (the message says which and why)."""


class BadSampleError(DataError):
    """One sample cannot be read; `--skip-bad` turns these into a logged count instead of a failure."""

    def __init__(self, origin: str, reason: str):
        super().__init__(f"{origin}: {reason}")
        self.origin = origin
        self.reason = reason

    def __reduce__(self):  # rebuilt from (origin, reason) when it crosses a process boundary
        return (type(self), (self.origin, self.reason))
