"""Bad input gives a clear error naming the file/key, or with skip_bad a logged count; half-written output
is never taken for complete output."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import dicom_tree, imagenet_tree, medmnist_npz, nifti_tree
from data_helpers import require

from pipelines import BadSampleError, DataError, build_loader, get_source, prepare
from pipelines.paths import ffcv_manifest, webdataset_dir

REPO = Path(__file__).resolve().parents[2]


def _corrupt_jpeg(root: Path) -> Path:
    bad = root / "train" / "n01443537" / "n01443537_2.JPEG"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated mid-scan
    return bad


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_jpeg_names_the_file_or_is_skipped(tmp_path, workers, caplog):
    root = imagenet_tree(tmp_path / "in")
    bad = _corrupt_jpeg(root)
    with pytest.raises(BadSampleError, match=r"n01443537_2.JPEG.*cannot decode image"):
        prepare("imagenet", tmp_path / "out", src=root, progress=False, workers=workers, shard_size=4)
    assert not (webdataset_dir(tmp_path / "out", "imagenet", "train") / "manifest.json").exists()
    with caplog.at_level(logging.WARNING):
        rows = prepare(
            "imagenet",
            tmp_path / "out",
            src=root,
            progress=False,
            workers=workers,
            shard_size=4,
            skip_bad=True,
        )
    assert rows[0]["samples"] == 11 and rows[0]["skipped"] == 1
    assert "skipped 1 bad samples" in caplog.text and str(bad) in caplog.text
    manifest = json.loads(
        (webdataset_dir(tmp_path / "out", "imagenet", "train") / "manifest.json").read_text()
    )
    assert manifest["num_skipped"] == 1 and manifest["skipped"][0][0] == str(bad)
    loader = build_loader(
        backend="webdataset",
        root=tmp_path / "out",
        dataset="imagenet",
        split="train",
        batch_size=11,
        train=False,
        image_size=16,
        workers=0,
    )
    assert len(next(iter(loader))["label"]) == 11


def test_truncated_or_altered_shard_is_refused(data_root, tmp_path):
    import shutil

    shutil.copytree(data_root / "digits", tmp_path / "digits")
    shard = webdataset_dir(tmp_path, "digits", "val") / "digits-val-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 4096])
    with pytest.raises(DataError, match=r"digits-val-000000.tar.*truncated"):
        build_loader(
            backend="webdataset", root=tmp_path, dataset="digits", split="val", batch_size=8, train=False
        )
    altered = bytearray(data)
    altered[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(altered))
    build_loader(
        backend="webdataset", root=tmp_path, dataset="digits", split="val", batch_size=8, train=False
    )
    with pytest.raises(DataError, match=r"digits-val-000000.tar: sha256 differs"):
        build_loader(
            backend="webdataset",
            root=tmp_path,
            dataset="digits",
            split="val",
            batch_size=8,
            train=False,
            verify=True,
        )


def test_missing_ffcv_manifest_means_incomplete(data_root, tmp_path):
    require("ffcv")
    import shutil

    shutil.copytree(data_root / "digits", tmp_path / "digits")
    ffcv_manifest(tmp_path, "digits", "val").unlink()
    with pytest.raises(DataError, match=r"val.json: no manifest"):
        build_loader(backend="ffcv", root=tmp_path, dataset="digits", split="val", batch_size=8, train=False)


def test_missing_class_folder(tmp_path):
    root = imagenet_tree(tmp_path / "in", val="folders")
    for f in (root / "val" / "n01443537").iterdir():
        f.unlink()
    (root / "val" / "n01443537").rmdir()
    with pytest.raises(DataError, match=r"class folder .*val/n01443537 is missing"):
        get_source("imagefolder", src=root)
    assert get_source("imagefolder", src=root, allow_missing_classes=True).num_samples("val") == 4


def test_flat_val_without_labels(tmp_path):
    root = imagenet_tree(tmp_path / "in", val="flat_loc")
    (root / "LOC_val_solution.csv").unlink()
    with pytest.raises(DataError, match=r"is flat but no label file"):
        get_source("imagenet", src=root)


def test_wrong_npz_key(tmp_path):
    path = tmp_path / "nodulemnist3d.npz"
    medmnist_npz(path, classes=2)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["val_imgs"] = arrays.pop("val_images")
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"nodulemnist3d.npz: key 'val_images' missing"):
        get_source("medmnist3d", src=path)
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"broken.npz: not a readable .npz"):
        get_source("medmnist3d", src=tmp_path / "broken.npz")


def test_unreadable_nifti_named_or_skipped(tmp_path):
    require("nibabel")
    root = nifti_tree(tmp_path / "in")
    (root / "case1.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(BadSampleError, match=r"case1.nii.gz: cannot read NIfTI"):
        prepare("nifti", tmp_path / "out", src=root, shape=(4, 4, 4), progress=False)
    rows = prepare("nifti", tmp_path / "out", src=root, shape=(4, 4, 4), progress=False, skip_bad=True)
    assert rows[0]["split"] == "train" and rows[0]["samples"] == 3 and rows[0]["skipped"] == 1


def test_corrupt_dicom_slice_named(tmp_path):
    require("pydicom")
    root = dicom_tree(tmp_path / "in", n=2)
    victim = sorted((root / "study1").iterdir())[3]
    victim.write_bytes(b"DICM? no")
    src = get_source("dicom", src=root, shape=(4, 4, 4), val_fraction=0.0)
    with pytest.raises(BadSampleError, match=str(victim.name)):
        src.get("train", 1)


def test_cli_reports_bad_input_and_skips_on_request(tmp_path):
    root = imagenet_tree(tmp_path / "in")
    bad = _corrupt_jpeg(root)
    cmd = [
        sys.executable,
        str(REPO / "launch" / "prepare_data.py"),
        "imagenet",
        "--src",
        str(root),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*cmd, "--skip-bad"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 bad samples" in proc.stderr
    assert re.search(r"^train\s+webdataset\s+11\s+\d+\s+[\d.]+\s+1\s", proc.stdout, re.M), proc.stdout


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated failure
def test_ffcv_reader_failure_is_an_error_not_a_hang(data_root, monkeypatch):
    require("ffcv")
    from ffcv.loader.epoch_iterator import EpochIterator

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated decoder failure")

    monkeypatch.setattr(EpochIterator, "run_pipeline", broken)
    loader = build_loader(
        backend="ffcv", root=data_root, dataset="digits", split="val", batch_size=8, train=False, workers=1
    )
    with pytest.raises(DataError, match=r"val.beton: FFCV's reader thread stopped \(RuntimeError: simulated"):
        next(iter(loader))
