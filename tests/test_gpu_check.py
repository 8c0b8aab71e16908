"""The GPU check script and its step benchmark, run here without a GPU: the script in its dry-run mode
(every step listed, none run) and the benchmark's code path on the CPU (`--cpu-smoke`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_the_gpu_check_script_parses_and_its_dry_run_lists_every_step(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.md").read_text()
    for step in ("install", "choices", "demo", "loaders", "prepare", "recipe", "resume", "gpu_step"):
        assert f"| {step} | ok |" in summary
    assert "train.max_steps=30" in (tmp_path / "resume.log").read_text()


def test_the_step_benchmark_runs_its_code_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_step.json"
    args = ["--cpu-smoke", "--encodings", "ape", "liere8", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_step.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["encoding"] for r in rows] == ["ape", "liere8"]
    assert all(r["step_ms"] > 0 and r["train_tflops_per_s"] > 0 for r in rows)
