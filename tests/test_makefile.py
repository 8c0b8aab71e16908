"""The Makefile's install choices on GPU machines, decided from nvidia-smi, checked with a stand-in
nvidia-smi on PATH (no GPU here) and `make -n` (nothing is installed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _make(tmp_path: Path, cuda: str | None, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cuda is not None:
        fake = tmp_path / "bin"
        fake.mkdir(exist_ok=True)
        (fake / "nvidia-smi").write_text(
            "#!/bin/sh\n"
            'if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"; exit 0; fi\n'
            f'echo "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: {cuda}  |"\n'
        )
        (fake / "nvidia-smi").chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"
    env.pop("TORCH_PIP_ARGS", None)
    env.pop("TORCH_CUDA", None)
    return subprocess.run(
        ["make", "-s", "-C", str(REPO), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("cuda", "torch_build", "dali"),
    [("12.4", "cu126", "dali-cuda120"), ("13.0", "cu130", "dali"), (None, None, "dali")],
)
def test_the_driver_picks_the_torch_build_and_the_dali_wheel(tmp_path, cuda, torch_build, dali):
    choices = _make(tmp_path, cuda, "gpu-choices")
    assert choices.returncode == 0, choices.stderr
    assert f"DALI extra '{dali}'" in choices.stdout
    venv = tmp_path / "venv"  # a fresh one: make -n prints what a first install would run
    plan = _make(tmp_path, cuda, "-n", f"VENV={venv}", f"{venv}/.test")
    if torch_build:
        assert f"from the {torch_build} build" in choices.stdout
        assert f"torch==2.13.0 --index-url https://download.pytorch.org/whl/{torch_build}" in plan.stdout
        assert "torch.cuda.is_available()" in plan.stdout  # the install checks that torch sees the GPUs
    else:
        assert "CPU build" in choices.stdout and "--index-url" not in plan.stdout
    assert f'-e ".[test,train,data,ffcv,{dali}]"' in plan.stdout


def test_a_driver_too_old_for_the_torch_build_stops_the_install_saying_so(tmp_path):
    choices = _make(tmp_path, "11.8", "gpu-choices")
    assert choices.returncode != 0
    assert "needs a driver for CUDA 12 or newer" in choices.stderr


@pytest.mark.parametrize(("cuda", "builds"), [(None, True), ("13.0", False)])
def test_the_install_compiles_deepspeeds_cpu_op_once_and_only_on_cpu_machines(tmp_path, cuda, builds):
    venv = tmp_path / "venv"
    plan = _make(tmp_path, cuda, "-n", f"VENV={venv}", "test", "demo")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("-m liere.engine.extensions") == (1 if builds else 0), plan.stdout
    assert f"touch {venv}/.cpu_ops" in plan.stdout


def test_the_unit_tests_run_on_workers_and_the_slow_ones_after_them_one_at_a_time(tmp_path):
    plan = _make(tmp_path, None, "-n", "test", "TEST_WORKERS=3", "PYTEST_ARGS=--durations=5")
    assert plan.returncode == 0, plan.stderr
    passes = [line for line in plan.stdout.splitlines() if "-m pytest" in line]
    assert len(passes) == 2, plan.stdout
    assert '-m "not slow" -n 3 --durations=5' in passes[0]
    assert "-m slow --durations=5" in passes[1] and " -n " not in passes[1]


def test_a_pass_that_selects_no_test_is_not_a_failure_but_a_failing_test_is(tmp_path):
    # the real target (its set-up taken as done: -o) on one file of unit tests, where the slow pass
    # selects nothing (pytest's exit status 5)
    target = ["-o", ".venv/.test", "-o", ".venv/.slurm", "-o", ".venv/.cpu_ops", "test", "TEST_WORKERS=0"]
    ok = _make(tmp_path, None, *target, "PYTEST_ARGS=tests/test_positions.py -q")
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "no tests ran" in ok.stdout or "deselected" in ok.stdout
    broken = tmp_path / "test_broken.py"
    broken.write_text("def test_fails():\n    assert False\n")
    bad = _make(tmp_path, None, *target, f"PYTEST_ARGS={broken} -q -p no:cacheprovider")
    assert bad.returncode != 0 and "1 failed" in bad.stdout
