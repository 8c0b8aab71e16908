"""pipelines.build_loader(access=...): one call builds the indexed or the stream loader of either backend."""

from __future__ import annotations

import pytest
from data_helpers import require_backend

from pipelines import build_loader, prepare
from pipelines.loaders.stream import StreamLoader
from pipelines.loaders.webdataset import WebDatasetLoader


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("access")
    prepare("compass2d", root, image_size=16, num_train=64, num_val=16, shard_size=16, progress=False,
            formats=["webdataset"])  # fmt: skip
    return root


def _build(root, backend="webdataset", **kw):
    return build_loader(backend, root=str(root), dataset="compass2d", split="train", batch_size=8, train=True,
                        image_size=16, rank=0, world_size=1, workers=0, **kw)  # fmt: skip


def test_access_selects_the_loader(root):
    assert type(_build(root)) is WebDatasetLoader
    stream = _build(root, access="stream", shuffle_buffer=8)
    assert isinstance(stream, StreamLoader) and stream.shuffle_buffer == 8
    assert sorted(i for b in stream for i in b["index"].tolist()) == list(range(64))
    pattern = str(root / "compass2d/webdataset/{split}/compass2d-{split}-{000000..000003}.tar")
    assert len(_build(root, access="stream", urls="pipe:cat " + pattern)) == 8


def test_dali_stream_and_refusals(root):
    require_backend("dali")
    from pipelines.loaders.dali_stream import DALIStreamLoader

    assert isinstance(_build(root, "dali", access="stream"), DALIStreamLoader)
    with pytest.raises(ValueError, match="local shards"):
        _build(root, "dali", access="stream", urls="pipe:cat x-000000.tar")


def test_bad_access_options(root):
    with pytest.raises(ValueError, match="unknown access"):
        _build(root, access="random")
    with pytest.raises(ValueError, match="access='stream'"):
        _build(root, urls="pipe:cat x-000000.tar")
    with pytest.raises(ValueError, match="no stream access"):
        _build(root, "ffcv", access="stream")


def test_the_engine_builds_both_modes_through_build_loader(root):
    from omegaconf import OmegaConf

    from liere.engine.data import _build

    d = dict(backend="webdataset", root=str(root), dataset="compass2d", shuffle_buffer=8, urls=None)
    opts = dict(batch_size=8, train=True, image_size=[16, 16], rank=0, world_size=1, seed=0, workers=0)
    assert type(_build(OmegaConf.create({**d, "access": "indexed"}), "train", **opts)) is WebDatasetLoader
    stream = _build(OmegaConf.create({**d, "access": "stream"}), "train", **opts)
    assert isinstance(stream, StreamLoader) and stream.shuffle_buffer == 8 and len(stream) == 8
