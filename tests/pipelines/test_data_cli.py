"""The command line and the helpers the training engine uses: prepare_data.py, ensure_prepared, dataset_info."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_helpers import require

from pipelines import BACKENDS, build_loader, dataset_info, ensure_prepared
from pipelines.paths import ffcv_file, webdataset_manifest

REPO = Path(__file__).resolve().parents[2]


def test_prepare_digits_then_every_backend(tmp_path):
    """The issue's 'done when': prepare with the CLI from another directory, then the snippet per backend."""
    for module in ("ffcv", "nvidia.dali"):
        require(module)
    out = tmp_path / "data"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "prepare_data.py"),
            "digits",
            "--out",
            str(out),
            "--formats",
            "webdataset,ffcv",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert "digits/train webdataset" in proc.stderr and "digits/val ffcv" in proc.stderr  # progress bars
    assert "val      ffcv" in proc.stdout and "done in" in proc.stdout  # summary
    assert ffcv_file(out, "digits", "val").is_file()
    labels = {}
    for backend in BACKENDS:
        loader = build_loader(
            backend=backend,
            root=str(out),
            dataset="digits",
            split="val",
            batch_size=64,
            train=False,
            image_size=32,
            rank=0,
            world_size=1,
            seed=0,
        )
        got = []
        for batch in loader:
            assert batch["input"].dtype.is_floating_point and batch["input"].shape[1:] == (1, 32, 32)
            got += batch["label"].tolist()
        labels[backend] = got
    assert len(labels["webdataset"]) == 360
    assert labels["webdataset"] == labels["ffcv"] == labels["dali"]


def test_cli_help_and_unknown_source():
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "prepare_data.py"), "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "compass3d" in proc.stdout and "--skip-bad" in proc.stdout
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "prepare_data.py"), "cifar100", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--src" in proc.stderr


def test_dataset_info_sizes_a_model(data_root):
    info = dataset_info(data_root, "compass3d")
    assert info["num_classes"] == 6 and info["channels"] == 1 and info["spatial_rank"] == 3
    assert info["native_size"] == [12, 12, 12] and info["splits"] == {
        "train": 200, "val": 90, "val-extent18": 90, "val-extent24": 90,  # extent: 1.5x and 2x canvases
    }  # fmt: skip
    info = dataset_info(data_root, "digits")
    assert (info["num_classes"], info["channels"], info["spatial_rank"], info["native_size"]) == (
        10,
        1,
        2,
        [32, 32],
    )


def _rank(root, rank, queue):
    info = ensure_prepared(
        "compass2d",
        root,
        rank=rank,
        world_size=2,
        image_size=16,
        num_train=64,
        num_val=16,
        timeout=120,
        poll=0.05,
    )
    queue.put((rank, info["splits"], os.path.getmtime(webdataset_manifest(root, "compass2d", "train"))))


@pytest.mark.slow
def test_ensure_prepared_on_two_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(str(tmp_path), r, queue)) for r in (1, 0)]  # the waiter first
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    results = sorted(queue.get(timeout=5) for _ in procs)
    extent = {"val-extent24": 16, "val-extent32": 16}  # the val samples on 1.5x and 2x canvases
    assert results[0][1] == results[1][1] == {"train": 64, "val": 16, **extent}
    assert results[0][2] == results[1][2]  # written once
    mtime = results[0][2]
    ensure_prepared("compass2d", tmp_path, rank=0, world_size=1, image_size=16, num_train=64, num_val=16)
    assert os.path.getmtime(webdataset_manifest(tmp_path, "compass2d", "train")) == mtime  # idempotent
    info = ensure_prepared(
        "compass2d", tmp_path, rank=0, world_size=1, image_size=16, num_train=80, num_val=16
    )
    assert info["splits"] == {
        "train": 80,
        "val": 16,
        **extent,
    }  # a different request is prepared, not mistaken for done


def test_import_needs_only_torch_and_numpy():
    code = (
        "import sys, pipelines, pipelines.loaders.webdataset, pipelines.loaders.ffcv, pipelines.loaders.dali\n"
        "heavy = {'PIL', 'webdataset', 'wids', 'ffcv', 'nvidia', 'nibabel', 'pydicom', 'av', 'sklearn', 'torchvision'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
