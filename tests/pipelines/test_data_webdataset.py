"""The webdataset writer: shard names, manifest, DALI index files, resume, atomic completion."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pytest

from pipelines import DataError, build_loader, prepare
from pipelines.paths import webdataset_dir
from pipelines.shards import dali_index_lines, read_dali_index


def test_manifest_and_shard_layout(data_root):
    d = webdataset_dir(data_root, "compass2d", "train")
    manifest = json.loads((d / "manifest.json").read_text())
    assert [s["url"] for s in manifest["shardlist"]] == [f"compass2d-train-{i:06d}.tar" for i in range(3)]
    assert [s["nsamples"] for s in manifest["shardlist"]] == [100, 100, 100]
    assert manifest["num_samples"] == 300 and manifest["num_classes"] == 8 and len(manifest["classes"]) == 8
    assert manifest["channels"] == 3 and manifest["spatial_rank"] == 2 and manifest["native_size"] == [24, 24]
    assert manifest["__kind__"] == "wids-shard-index-v1"
    assert sum(manifest["label_counts"]) == 300
    with tarfile.open(d / "compass2d-train-000001.tar") as tar:
        names = tar.getnames()
    # the CRC-32 of each sample's label, index and JPEG travels with it (shards/checksum.py)
    assert names[:4] == ["000000100.cls", "000000100.crc32", "000000100.idx", "000000100.jpg"]
    assert manifest["sample_checksums"] == "crc32"
    assert not list(d.glob(".*")), "no temporary or progress files left behind"


def test_volume_shards_hold_channels_first_npy(data_root):
    import io

    import numpy as np

    d = webdataset_dir(data_root, "compass3d", "val")
    with tarfile.open(d / "compass3d-val-000000.tar") as tar:
        arr = np.load(io.BytesIO(tar.extractfile("000000000.npy").read()))
        label = int(tar.extractfile("000000000.cls").read())
    assert arr.shape == (1, 12, 12, 12) and arr.dtype == np.uint8
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["kind"] == "volume" and manifest["spatial_rank"] == 3 and 0 <= label < 6


def test_dali_index_matches_dalis_own_tool(data_root, tmp_path):
    d = webdataset_dir(data_root, "digits", "val")
    ours = (d / "digits-val-000000.idx").read_text().splitlines()
    assert ours == dali_index_lines(d / "digits-val-000000.tar")
    entries = read_dali_index(d / "digits-val-000000.idx")
    assert len(entries) == 360 and set(entries[0]) == {"cls", "crc32", "idx", "jpg"}
    import shutil

    tool = shutil.which("wds2idx") or os.path.join(os.path.dirname(os.sys.executable), "wds2idx")
    if not os.path.exists(tool):
        pytest.skip("DALI's wds2idx is not installed")
    subprocess.run(
        [tool, str(d / "digits-val-000000.tar"), str(tmp_path / "ref.idx")], check=True, capture_output=True
    )
    assert (tmp_path / "ref.idx").read_text().split() == " ".join(ours).split()


class _Interrupted(BaseException):
    pass


def test_resume_rewrites_only_unfinished_shards(tmp_path, monkeypatch):
    from pipelines.writers import webdataset as W

    calls = []
    fail = [True]
    real = W._write_shard

    def flaky(task):
        calls.append(task["shard"])
        if task["shard"] == 2 and fail[0]:
            raise _Interrupted  # an interruption (a crash, a kill) in the middle of the run
        return real(task)

    monkeypatch.setattr(W, "_write_shard", flaky)
    kw = dict(image_size=16, num_train=250, num_val=20, shard_size=60, progress=False, splits=["train"])
    with pytest.raises(_Interrupted):
        prepare("compass2d", tmp_path, **kw)
    d = webdataset_dir(tmp_path, "compass2d", "train")
    assert not (d / "manifest.json").exists(), "an interrupted split has no manifest"
    assert not list(d.glob(".*.tmp*")), "no half-written shard is left under any name"
    with pytest.raises(DataError, match="no manifest"):
        build_loader(
            backend="webdataset", root=tmp_path, dataset="compass2d", split="train", batch_size=8, train=False
        )
    fail[0] = False
    done_mtimes = {p.name: p.stat().st_mtime_ns for p in d.glob("*.tar")}
    assert set(done_mtimes) == {"compass2d-train-000000.tar", "compass2d-train-000001.tar"}
    calls.clear()
    prepare("compass2d", tmp_path, **kw)
    assert calls == [2, 3, 4]
    assert {p.name: p.stat().st_mtime_ns for p in d.glob("*.tar") if p.name in done_mtimes} == done_mtimes
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["num_samples"] == 250
    # a complete split with the same arguments is not rewritten; different arguments rewrite it
    calls.clear()
    prepare("compass2d", tmp_path, **kw)
    assert calls == []
    prepare("compass2d", tmp_path, **{**kw, "shard_size": 100})
    assert calls == [0, 1, 2]
    assert sorted(p.name for p in d.glob("*.tar")) == [f"compass2d-train-{i:06d}.tar" for i in range(3)]


def test_parallel_writing_gives_identical_shards(tmp_path):
    kw = dict(image_size=16, num_train=200, num_val=10, shard_size=50, progress=False, splits=["train"])
    prepare("compass2d", tmp_path / "a", workers=1, **kw)
    prepare("compass2d", tmp_path / "b", workers=2, **kw)
    ma = json.loads((webdataset_dir(tmp_path / "a", "compass2d", "train") / "manifest.json").read_text())
    mb = json.loads((webdataset_dir(tmp_path / "b", "compass2d", "train") / "manifest.json").read_text())
    assert [s["sha256"] for s in ma["shardlist"]] == [s["sha256"] for s in mb["shardlist"]]
