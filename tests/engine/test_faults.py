"""Faults injected for real into 2-rank training over gloo: the job ends soon and names the cause.

A hang here would last the collective timeout (train.dist_timeout_s, 600 s); the runs below end in
well under a minute on a 2-core machine, so the subprocess limit of 240 s separates the two.
"""

from __future__ import annotations

import json
import re
import shutil
import time

from tests.engine._train import run_train


def _flip_middle(path, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + n] = bytes(b ^ 0xA5 for b in data[middle : middle + n])
    path.write_bytes(bytes(data))


def test_a_corrupt_training_shard_ends_the_job_naming_shard_sample_and_split(tmp_path, digits_root):
    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    shard = sorted((root / "digits" / "webdataset" / "train").glob("*.tar"))[0]
    _flip_middle(shard)
    start = time.monotonic()
    proc, _ = run_train(tmp_path, root, ["train.max_steps=60", "tracking.enabled=false"], timeout=240)
    took = time.monotonic() - start
    assert proc.returncode != 0
    errors = re.findall(r"\berror: (.*)", proc.stderr)  # (a line may begin with a progress bar)
    assert errors, proc.stderr[-3000:]
    # the failing rank says which shard, sample and split, without the worker's wrapped traceback
    assert errors[0].startswith(f"{shard}: sample '") and "split 'train'" in errors[0], errors
    assert "Original Traceback" not in errors[0]
    print(f"job ended {took:.0f} s after start")  # a hang would have lasted the 600 s collective timeout


def test_with_skip_the_run_trains_through_the_corrupt_samples_and_counts_them(tmp_path, digits_root):
    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    _flip_middle(sorted((root / "digits" / "webdataset" / "train").glob("*.tar"))[0])
    overrides = ["train.epochs=1", "train.max_steps=null", "data.bad_samples=skip", "tracking.enabled=false"]
    proc, out = run_train(tmp_path, root, overrides, timeout=240)  # one epoch: every sample read once
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["step"] == 44 and status["data/bad_samples"] >= 1
    assert "sample '" in proc.stderr  # each replacement is a warning naming the sample
