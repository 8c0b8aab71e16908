"""Checkpoints that protect themselves: sizes and checksums in COMPLETE, a damaged newest one falls
back to the previous, a failed save names the folder, the space and the checkpoint still in force.

The engine here is a stand-in that writes files as DeepSpeed's save_checkpoint does (one process,
no DeepSpeed); the real 2-rank save and resume are in test_training.py. The full disk is a real
one where this runs as root (a 2 MiB tmpfs), else the test skips.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from liere.engine.checkpoint import Checkpointer, CheckpointError, _sha256, consolidated_state_dict, step_tag


class FileEngine:
    """Writes a real torch file of about ``size`` bytes per save, like a model-states file; ``fail``
    raises after writing half of it."""

    def __init__(self, size: int = 4096, fail: Exception | None = None) -> None:
        self.fail = fail
        buffer = io.BytesIO()
        torch.save({"module": torch.randint(0, 255, (max(1, size - 1200),), dtype=torch.uint8)}, buffer)
        self.payload = buffer.getvalue()

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        half = len(self.payload) // 2
        with open(folder / "mp_rank_00_model_states.pt", "wb") as f:
            f.write(self.payload[:half])
            if self.fail:
                raise self.fail
            f.write(self.payload[half:])


def test_complete_records_every_files_size_and_checksum(tmp_path):
    ckpt, engine = Checkpointer(tmp_path, rank=0, keep=2), FileEngine()
    tag = ckpt.save(engine, 10, {"progress": {}})
    record = json.loads((ckpt.dir / tag / "COMPLETE").read_text())
    assert record["step"] == 10
    assert set(record["files"]) == {"mp_rank_00_model_states.pt", "rng_rank0.pt"}
    assert record["files"]["mp_rank_00_model_states.pt"]["size"] == len(engine.payload)
    assert all(len(f["sha256"]) == 64 for f in record["files"].values())


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_naming_the_file(tmp_path, damage, capsys):
    Checkpointer(tmp_path, rank=0, keep=2).save(FileEngine(), 10, {})
    Checkpointer(tmp_path, rank=0, keep=2).save(FileEngine(), 20, {})
    bad = tmp_path / "checkpoints" / step_tag(20) / "mp_rank_00_model_states.pt"
    data = bytearray(bad.read_bytes())
    if damage == "truncate":
        bad.write_bytes(data[:100])
    elif damage == "flip":
        data[2000] ^= 0xFF
        bad.write_bytes(bytes(data))
    else:
        bad.unlink()
    fresh = Checkpointer(tmp_path, rank=0, keep=2)  # a restart: nothing verified yet
    assert fresh.latest() == step_tag(10) and fresh.latest_step() == 10
    warning = capsys.readouterr().err
    assert str(bad) in warning and f"resuming from {step_tag(10)}" in warning


def test_no_undamaged_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    Checkpointer(tmp_path, rank=0, keep=2).save(FileEngine(), 10, {})
    (tmp_path / "checkpoints" / step_tag(10) / "rng_rank0.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint .*rng_rank0\.pt.*remove the folder"):
        Checkpointer(tmp_path, rank=0, keep=2).latest()


def test_a_failing_save_says_what_is_in_force_and_removes_its_partial_folder(tmp_path):
    ckpt = Checkpointer(tmp_path, rank=0, keep=2)
    ckpt.save(FileEngine(), 10, {})
    failing = FileEngine(fail=RuntimeError("basic_ios::clear: iostream error"))  # torch's full-disk error
    with pytest.raises(CheckpointError) as err:
        ckpt.save(failing, 20, {})
    message = str(err.value)
    assert str(ckpt.dir / step_tag(20)) in message and "basic_ios::clear" in message
    assert (
        "GiB free on" in message
        and f"{ckpt.dir / step_tag(10)} stays the one a restart resumes from" in message
    )
    assert not (ckpt.dir / step_tag(20)).exists() and ckpt.latest() == step_tag(10)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("tmpfs mount refused here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_refused_before_writing_or_named_when_it_fills(small_disk):
    ckpt = Checkpointer(small_disk, rank=0, keep=3)
    ckpt.save(FileEngine(size=800_000), 10, {})  # fits
    with pytest.raises(CheckpointError, match="could not be written") as filled:  # fills the disk midway
        ckpt.save(FileEngine(size=3_000_000), 20, {})
    assert "stays the one a restart resumes from" in str(filled.value)
    assert not (ckpt.dir / step_tag(20)).exists()
    ckpt.save(FileEngine(size=800_000), 30, {})  # 1.6 MB used: the next one of that size cannot fit
    with pytest.raises(CheckpointError, match=r"not written: the last one took 0\.00 GiB") as refused:
        ckpt.save(FileEngine(size=800_000), 40, {})
    assert f"{ckpt.dir / step_tag(30)} stays the one" in str(refused.value)
    assert ckpt.latest() == step_tag(30)


class RunsCode:
    """What a hostile checkpoint pickles: loading it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_before_loading(tmp_path):
    ckpt = Checkpointer(tmp_path, rank=0, keep=2)
    tag = ckpt.save(FileEngine(), 10, {})
    marker = tmp_path / "ran"
    bad = ckpt.dir / tag / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "hook": RunsCode(marker)}, bad)
    record = json.loads((ckpt.dir / tag / "COMPLETE").read_text())  # checksums that match: sent as is
    record["files"][bad.name] = {"size": bad.stat().st_size, "sha256": _sha256(bad)}
    (ckpt.dir / tag / "COMPLETE").write_text(json.dumps(record))
    with pytest.raises(
        CheckpointError, match=r"mp_rank_00_model_states\.pt would import .*system.*could run code"
    ):
        Checkpointer(tmp_path, rank=0, keep=2).latest()
    with pytest.raises(CheckpointError, match="could run code"):
        consolidated_state_dict(ckpt.dir, tag)
    assert not marker.exists()
