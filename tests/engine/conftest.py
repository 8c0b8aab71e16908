"""Fixtures of the engine tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """The embedded digits set, prepared once for the whole session."""
    from pipelines import ensure_prepared

    root = tmp_path_factory.mktemp("data")
    ensure_prepared("digits", root, formats=["webdataset"], rank=0, world_size=1)
    return root
