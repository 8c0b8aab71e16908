"""data.access=stream: the webdataset library's pipeline and DALI's webdataset reader over prepared shards."""

from __future__ import annotations

import shutil

import pytest
from data_helpers import require

from pipelines import build_loader, prepare
from pipelines.errors import BadSampleError
from pipelines.loaders.stream import build_stream_loader, manifest_url, shard_plan
from pipelines.shards.index import read_dali_index


@pytest.fixture(scope="module")
def stream_root(tmp_path_factory):
    """compass2d with 4 equal train shards of 60 (even over 2 ranks) and a val split of 2 shards (70 + 30)."""
    root = tmp_path_factory.mktemp("stream")
    prepare("compass2d", root, image_size=16, num_train=240, num_val=100, shard_size=60, progress=False,
            formats=["webdataset"])  # fmt: skip
    return root


def _stream(root, split="train", **kw):
    opts = dict(batch_size=8, train=split == "train", image_size=16, seed=0, workers=2, shuffle_buffer=30)
    return build_stream_loader(str(root), "compass2d", split, **{**opts, **kw})


def _indices(loader) -> list[int]:
    return [i for b in loader for i in b["index"].tolist()]


def test_stream_covers_every_sample_once_over_2_ranks_x_2_workers(stream_root):
    per_rank = [_indices(_stream(stream_root, rank=r, world_size=2)) for r in range(2)]
    assert [len(p) for p in per_rank] == [120, 120]  # 2 shards of 60 per rank, 15 batches of 8
    assert len(set(per_rank[0]) | set(per_rank[1])) == 240 and not set(per_rank[0]) & set(per_rank[1])
    again = _indices(_stream(stream_root, rank=0, world_size=2))
    assert sorted(again) == sorted(per_rank[0])  # the shard plan is a function of (seed, epoch)


def test_uneven_shards_resample_to_a_fixed_equal_length(stream_root):
    loaders = [_stream(stream_root, rank=r, world_size=3) for r in range(3)]  # 4 shards over 3 ranks
    assert all(lo.resampled for lo in loaders)
    assert [len(lo) for lo in loaders] == [10, 10, 10]  # (240 // 3) // 8
    for lo in loaders:
        batches = list(lo)
        assert len(batches) == 10 and all(len(b["label"]) == 8 for b in batches)
        assert lo.epoch == 1


def test_eval_stream_is_the_indexed_split(stream_root):
    got = sorted(i for r in range(2) for i in _indices(_stream(stream_root, "val", rank=r, world_size=2)))
    ref = build_loader("webdataset", root=str(stream_root), dataset="compass2d", split="val", batch_size=8,
                       train=False, image_size=16, rank=0, world_size=1, workers=0)  # fmt: skip
    assert got == sorted(_indices(ref)) and len(got) == 100


def test_pipe_urls_and_the_manifest_beside_them(stream_root):
    base = stream_root / "compass2d" / "webdataset" / "{split}"
    urls = f"pipe:cat {base}/compass2d-{{split}}-{{000000..000001}}.tar"
    assert manifest_url("pipe:cat /a/b/x-000001.tar") == "pipe:cat /a/b/manifest.json"
    lo = _stream(stream_root, "val", urls=urls, rank=0, world_size=1)
    assert lo.urls[0].startswith("pipe:cat ") and len(_indices(lo)) == 100


def test_resume_repeats_and_skips_no_shard(stream_root):
    first = _stream(stream_root, rank=0, world_size=2)
    it = iter(first)
    seen = [i for _, b in zip(range(6), it) for i in b["index"].tolist()]
    state = first.state_dict()
    it.close()
    assert state["epoch"] == 0 and state["batches"] == 6 and state["access"] == "stream"
    resumed = _stream(stream_root, rank=0, world_size=2)
    resumed.load_state_dict(state)
    rest = _indices(resumed)
    assert len(rest) == 120 - 48 and not set(seen) & set(rest)
    whole = _indices(_stream(stream_root, rank=0, world_size=2))
    assert sorted(seen + rest) == sorted(whole)  # the same shards, each sample once
    assert resumed.epoch == 1


def _corrupt_copy(root, tmp_path):
    dst = tmp_path / "bad"
    shutil.copytree(root / "compass2d", dst / "compass2d")
    tar = next((dst / "compass2d" / "webdataset" / "train").glob("*000001.tar"))
    off, size = read_dali_index(tar.with_suffix(".idx"))[3]["jpg"]
    data = bytearray(tar.read_bytes())
    data[off + size // 2 : off + size // 2 + 8] = b"\x00" * 8  # inside a payload: its crc32 no longer matches
    tar.write_bytes(bytes(data))
    return dst


def test_corrupt_shard_is_named_or_counted(stream_root, tmp_path):
    bad = _corrupt_copy(stream_root, tmp_path)
    with pytest.raises(BadSampleError, match=r"000001\.tar"):
        for r in range(2):
            _indices(_stream(bad, rank=r, world_size=2))
    counted = [_stream(bad, rank=r, world_size=2, bad_samples="skip") for r in range(2)]
    sizes = [len(_indices(lo)) for lo in counted]
    assert sizes == [120, 120]  # topped up to the fixed length
    assert sum(lo.bad_samples for lo in counted) >= 1


def test_dali_reader_gives_the_indexed_samples(stream_root):
    require("nvidia.dali")
    from pipelines.loaders.dali_stream import DALIStreamLoader

    split = stream_root / "compass2d" / "webdataset"
    val = [DALIStreamLoader(split / "val", batch_size=8, train=False, image_size=16, rank=r, world_size=2, seed=0,
                            workers=1, device="cpu") for r in range(2)]  # fmt: skip
    got = sorted(i for lo in val for i in _indices(lo))
    ref = build_loader("webdataset", root=str(stream_root), dataset="compass2d", split="val", batch_size=8,
                       train=False, image_size=16, rank=0, world_size=1, workers=0)  # fmt: skip
    assert got == sorted(_indices(ref))
    train = [DALIStreamLoader(split / "train", batch_size=8, train=True, image_size=16, rank=r, world_size=2, seed=0,
                              workers=1, device="cpu") for r in range(2)]  # fmt: skip
    epochs = [[_indices(lo) for lo in train] for _ in range(2)]
    for per_rank in epochs:
        assert [len(p) for p in per_rank] == [120, 120] and len(set(per_rank[0]) | set(per_rank[1])) == 240
    # resume: the same stream after the used batches
    lo = DALIStreamLoader(split / "train", batch_size=8, train=True, image_size=16, rank=0, world_size=2, seed=0,
                          workers=1, device="cpu")  # fmt: skip
    whole = _indices(lo)
    lo2 = DALIStreamLoader(split / "train", batch_size=8, train=True, image_size=16, rank=0, world_size=2, seed=0,
                           workers=1, device="cpu")  # fmt: skip
    lo2.load_state_dict({**lo.state_dict(), "epoch": 0, "batches": 5})
    assert _indices(lo2) == whole[40:]


def test_shard_plan_even_and_resampled():
    even = [shard_plan([10] * 4, epoch=0, seed=1, rank=r, world_size=2, train=True) for r in range(2)]
    assert sorted(even[0] + even[1]) == [0, 1, 2, 3]
    res = shard_plan([10, 10, 7], epoch=0, seed=1, rank=0, world_size=2, train=True, need=16)
    assert sum([10, 10, 7][s] for s in res) >= 26
