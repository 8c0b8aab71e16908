"""Fixtures for the pipelines tests: prepared embedded data sets, built once per session."""

from __future__ import annotations

import gc
import os
import threading

import pytest

from pipelines import prepare


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """digits (webdataset + FFCV when available), compass2d at 24 px and a small compass3d."""
    root = tmp_path_factory.mktemp("prepared")
    try:
        import ffcv  # noqa: F401

        formats = ["webdataset", "ffcv"]
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        formats = ["webdataset"]
    prepare("digits", root, formats=formats, shard_size=500, progress=False)
    sizes = {"compass2d": dict(image_size=24, num_train=300, num_val=130, shard_size=100),
             "compass3d": dict(image_size=12, num_train=200, num_val=90, shard_size=64)}  # fmt: skip
    for name, kw in sizes.items():
        prepare(name, root, formats=formats, progress=False, **kw)
    return root


@pytest.fixture(autouse=True)
def _ffcv_threads_finished():
    """FFCV's reader thread keeps working (numba compiles, with ast.parse) after a test took its batch; on
    CPython 3.11 an ast.parse racing one in another thread can fail (python/cpython#106905), and DALI's
    import and AutoGraph parse. On pytest-xdist workers any pipelines test can follow an FFCV one, so each
    ends with those threads gone."""
    yield
    if not any(type(t).__name__ == "EpochIterator" for t in threading.enumerate()):
        return
    gc.collect()  # closes abandoned loader iterators, which tell their FFCV thread to stop
    for thread in threading.enumerate():
        if type(thread).__name__ == "EpochIterator":
            thread.join(timeout=60)


def pytest_collection_modifyitems(items):
    # numba (FFCV's JIT) raises a KeyError in a dispatcher finalizer when compiled functions are collected;
    # it is noise from the library's teardown, not a test outcome.
    for item in items:
        if "tests/pipelines" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"))
