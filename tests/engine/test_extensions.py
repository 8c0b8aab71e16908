"""A build lock left by a killed process in torch's extensions folder no longer hangs every later run.

The real case: a session ended while a run was loading DeepSpeed's CPU shm op; its lock stayed in
~/.cache/torch_extensions, and the next `make test`, in another clone, waited on it until CI's 90
minutes ran out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from liere.engine import extensions

ROOT = Path(__file__).resolve().parents[2]


def _lock(folder: Path, age_s: float) -> Path:
    folder.mkdir(parents=True)
    lock = folder / "lock"
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_only_locks_older_than_any_build_are_removed_and_each_is_named(tmp_path):
    stale = _lock(tmp_path / extensions.SHM_OP, age_s=3600)
    said = []
    removed = extensions.clear_stale_locks(announce=said.append, root=tmp_path)
    assert removed == [stale] and not stale.exists()
    assert len(said) == 1 and str(stale) in said[0] and "60 min old" in said[0]
    assert extensions.clear_stale_locks(announce=said.append, root=tmp_path) == []


def test_a_young_lock_is_waited_for_and_removed_only_once_it_is_stale(tmp_path):
    building = _lock(tmp_path / "cpu_adam", age_s=0)
    released = threading.Timer(0.5, building.unlink)  # a build that finishes: its lock goes
    released.start()
    said = []
    assert (
        extensions.clear_stale_locks(older_than_s=60, announce=said.append, root=tmp_path, poll_s=0.1) == []
    )
    released.join()
    assert len(said) == 1 and said[0].startswith(f"[extensions] waiting for {building}")
    killed = _lock(tmp_path / extensions.SHM_OP, age_s=0)  # its owner killed: never released
    assert extensions.clear_stale_locks(
        older_than_s=0.5, announce=said.append, root=tmp_path, poll_s=0.1
    ) == [killed]
    assert not killed.exists() and f"removed {killed}" in said[-1]


def test_extensions_belong_to_the_python_environment_unless_torch_extensions_dir_is_set(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions.use_environment_folder() == tmp_path
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    if sys.prefix == sys.base_prefix:
        pytest.skip("not in a virtual environment (make install creates .venv)")
    assert extensions.use_environment_folder() == Path(sys.prefix) / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "torch_extensions")


INIT = """
    from liere.engine import distributed
    distributed.init(60)  # a plain process: rank 0 of 1 on a free port
    print("process group up", flush=True)
"""


@pytest.mark.slow
def test_a_run_starts_although_a_killed_process_left_the_shm_ops_lock(tmp_path):
    built = Path(os.environ.get("TORCH_EXTENSIONS_DIR", extensions.environment_folder())) / extensions.SHM_OP
    if not list(built.glob("*.so")):
        pytest.skip(f"no built {extensions.SHM_OP} in {built.parent}: make install builds it")
    folder = tmp_path / "ext" / extensions.SHM_OP
    shutil.copytree(built, folder, ignore=shutil.ignore_patterns("lock"))  # mtimes kept: nothing rebuilds
    lock = folder / "lock"
    lock.touch()
    then = time.time() - 2 * extensions.STALE_LOCK_S
    os.utime(lock, (then, then))
    env = dict(
        os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(INIT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,  # a hang detector: the run takes seconds; torch's wait on the lock never ends
        )
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the run still waits on {lock}: {hung.stdout}{hung.stderr}")
    assert done.returncode == 0, done.stderr
    assert f"removed {lock}" in done.stdout and "process group up" in done.stdout
    assert not lock.exists()
