"""Helpers of the engine's integration tests: real DeepSpeed ranks over gloo, a real MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _mlflow_store import sqlite_store

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "launch" / "train.py"
DEMO = REPO / "configs" / "demo.yaml"
# A small, fast variant of the demo: 16 px digits, 30 steps of 16 samples per rank.
FAST = [
    "data.batch_size=16",
    "data.workers=1",
    "train.max_steps=30",
    "optim.warmup_epochs=0.1",
    "train.log_every=5",
    "train.eval_every=0",
    "tracking.system_metrics=false",
    "eval.sizes=[16]",
]


def train_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    if "MLFLOW_TRACKING_URI" not in extra:
        env["MLFLOW_TRACKING_URI"] = sqlite_store(tmp_path / "mlflow.db")
    env.update(extra)
    return env


def command(overrides: list[str], nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(TRAIN), str(DEMO), *overrides]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*torchrun, str(TRAIN), str(DEMO), *overrides]


def run_train(
    tmp_path: Path,
    digits_root: Path,
    overrides: list[str],
    nproc: int = 2,
    timeout: int = 300,
    env: dict[str, str] | None = None,
    out: str = "run",
) -> tuple[subprocess.CompletedProcess, Path]:
    out_dir = tmp_path / out
    args = [f"data.root={digits_root}", f"train.out_dir={out_dir}", *FAST, *overrides]
    proc = subprocess.run(
        command(args, nproc),
        cwd=tmp_path,
        env=env or train_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, out_dir


def summary(out_dir: Path) -> dict:
    return json.loads((out_dir / "summary.json").read_text())
