"""The end of a run and the per-step stop vote on real gloo ranks (issue 15, items 7 and 11).

Rank 0 alone exports, reports and uploads at the end; the other ranks wait for it on the CPU group
without the device group's ``dist_timeout_s``, so a slow file system or MLflow server on rank 0 no
longer kills the job at its very end. The stop flag (a signal on any rank) is agreed by an
asynchronous all-reduce over the same CPU group, read one step later: no device sync per step.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import torch.distributed as dist
import torch.multiprocessing as mp

from ._train import DEMO, FAST, REPO, TRAIN, summary, train_env

SLOW_S = 12  # rank 0's export takes longer than the groups' timeout below
TIMEOUT_S = 6


def _ranks(rank: int, world: int, port: int, results) -> None:
    from liere.engine import distributed

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )  # fmt: skip
    distributed._control_group()  # as distributed.init makes it
    vote = distributed.AnyRankLater()
    agreed = [vote(rank == 1 and step == 3) for step in range(6)]  # only rank 1 sees the signal, at step 3
    distributed.leave_together()
    results[rank] = (agreed, dist.is_initialized())


def test_ranks_agree_on_a_stop_one_step_later_and_leave_together():
    with mp.Manager() as manager:
        results = manager.dict()
        port = 29000 + os.getpid() % 2000
        mp.start_processes(_ranks, args=(2, port, results), nprocs=2, start_method="spawn")
        got = dict(results)
    # the vote of step 3 comes back at step 4 on both ranks, and after it no rank votes again
    assert got[0][0] == got[1][0] == [False, False, False, False, True, False]
    assert got[0][1] is False and got[1][1] is False  # both left together, process groups destroyed


def test_a_slow_rank_0_export_no_longer_kills_the_job(tmp_path, digits_root):
    """Two DeepSpeed ranks under torchrun with dist_timeout_s=6; rank 0's exports take 12 s (a slow file
    system or MLflow server, made so by wrapping write_outputs): the job succeeds and its outputs are whole."""
    wrapper = tmp_path / "slow_export.py"
    wrapper.write_text(
        "import runpy, sys, time\n"
        "import liere.engine.trainer as trainer\n"
        "real = trainer.write_outputs\n"
        f"trainer.write_outputs = lambda *a, **k: (time.sleep({SLOW_S}), real(*a, **k))[1]\n"
        f"sys.argv[0] = {str(TRAIN)!r}\n"
        f"runpy.run_path({str(TRAIN)!r}, run_name='__main__')\n"
    )
    out = tmp_path / "run"
    overrides = [
        f"data.root={digits_root}", f"train.out_dir={out}", *FAST, "train.max_steps=4",
        f"train.dist_timeout_s={TIMEOUT_S}", "tracking.enabled=false",
    ]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, str(wrapper), str(DEMO), *overrides], cwd=tmp_path, capture_output=True, text=True,
        env=train_env(tmp_path, PYTHONPATH=str(REPO)), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary(out)
    assert s["step"] == 4 and s["sweep"] and (out / "model.safetensors").is_file()
    assert "timed out" not in proc.stderr.lower() and "timeout" not in proc.stderr.lower()
