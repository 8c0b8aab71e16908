"""Orchestration as a library, fast: the sweep's plan, sizes, the comparison report from fake runs,
evaluation outputs, Slurm flags and time limits. Nothing is trained or submitted."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from liere.engine.evaluate import per_axis_sizes, result_line, size_name
from liere.orchestration.cli import command_parser
from liere.orchestration.evaluation import parse_size, row_name, write_outputs
from liere.orchestration.report import bootstrap, write_report
from liere.orchestration.sweep import Run, Sweep, SweepSpec, eval_sizes, plan


def test_sizes_are_parsed_named_and_spread_over_the_axes():
    assert parse_size("48") == 48 and parse_size("8x224X224") == [8, 224, 224]
    for bad in ("0", "ax4", "16x-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
    assert size_name([8, 112, 112]) == "8x112x112"
    assert row_name({"size": [16, 16], "shuffled": True}) == "16x16 shuffled"
    assert row_name({"size": [16, 16]}) == "16x16"
    assert per_axis_sizes([48, [24, 32]], 2) == [[48, 48], [24, 32]]
    with pytest.raises(ValueError, match="3 axes"):
        per_axis_sizes([[8, 16, 16]], 2)
    line = result_line("16x16", {"top1": 0.5, "top5": 0.75, "loss": 1.25, "count": 8})
    assert line == "eval 16x16: top-1 50.00%  top-5 75.00%  loss 1.2500  (8 samples)"


def test_the_plan_goes_seed_by_seed_over_every_arm(tmp_path):
    spec = SweepSpec(
        "configs/demo.yaml", encodings="ape,liere8", variant=["l64s:model.encoding=liere64,sparsity.weight=1e-3"],
        seeds=2,
    )  # fmt: skip
    runs = plan(spec, tmp_path)
    assert [r.name for r in runs] == ["ape-s0", "liere8-s0", "l64s-s0", "ape-s1", "liere8-s1", "l64s-s1"]
    assert runs[2].overrides == ["model.encoding=liere64", "sparsity.weight=1e-3", "train.seed=0"]
    assert runs[3].out_dir == tmp_path / "ape-s1"
    for bad, message in [
        (SweepSpec("c"), "nothing to compare"),
        (SweepSpec("c", encodings="ape,ape"), "distinct"),
        (SweepSpec("c", variant=["no-overrides"]), "LABEL:KEY=VALUE"),
        (SweepSpec("c", encodings="ape", seeds=0), ">= 1"),
        (SweepSpec("c", encodings="ape", parallel=0), "--parallel 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            plan(bad, tmp_path)


def test_each_run_gets_its_folder_name_and_parent_and_torchrun_for_several_ranks(tmp_path):
    spec = SweepSpec("configs/demo.yaml", ["train.epochs=1"], encodings="ape", seeds=1, nproc=2)
    runs = plan(spec, tmp_path)
    sweep = Sweep(spec, "demo", tmp_path, runs, "python launch/compare.py ...", parent_id="abc")
    assert sweep.run_overrides(runs[0]) == [
        "train.epochs=1", "model.encoding=ape", "train.seed=0", f"train.out_dir={tmp_path / 'ape-s0'}",
        "tracking.run_name=demo/ape-s0", "eval.shuffle_patches=false", "tracking.parent_run_id=abc",
    ]  # fmt: skip
    cmd = sweep.train_command(runs[0])
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5].endswith("launch/train.py") and cmd[6] == str(Path("configs/demo.yaml").resolve())


def test_parallel_runs_overlap_share_the_cores_and_a_failure_is_reported(tmp_path, monkeypatch, capsys):
    """The local scheduler with short real processes standing in for trainings (the slow sweep test in
    test_compare.py trains for real with --parallel 2)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spec = SweepSpec("configs/demo.yaml", encodings="ape,liere8,string", seeds=1, parallel=2)
    runs = plan(spec, tmp_path)
    sweep = Sweep(spec, "demo", tmp_path, runs, "python launch/compare.py ...")
    script = (
        "import os, sys, time; open(sys.argv[1], 'w').write(os.environ['OMP_NUM_THREADS']); "
        "time.sleep(0.5); sys.exit(sys.argv[2] == 'liere8')"
    )
    monkeypatch.setattr(
        sweep,
        "train_command",
        lambda run: [sys.executable, "-c", script, str(run.out_dir / "threads"), run.label],
    )
    sweep.run_local()
    lines = capsys.readouterr().out.splitlines()
    started = [i for i, line in enumerate(lines) if line.endswith(".log)")]
    ended = [i for i, line in enumerate(lines) if "done in" in line or "FAILED" in line]
    assert len(started) == len(ended) == 3
    assert started[1] < ended[0] < started[2], "two runs at once, the third when a slot frees"
    threads = {(r.out_dir / "threads").read_text() for r in runs}
    assert threads == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert [r.error for r in runs] == [None, "exit status 1", None]


def test_the_training_size_is_always_evaluated():
    cfg = OmegaConf.create({"model": {"img_size": [16, 16]}, "eval": {"sizes": []}})
    assert eval_sizes(SweepSpec("c", sizes=["24", "32x32"]), cfg) == [[16, 16], 24, [32, 32]]
    assert eval_sizes(SweepSpec("c", sizes=["16", "24"]), cfg) == [16, 24]
    assert eval_sizes(SweepSpec("c"), cfg) is None


def _fake_run(tmp_path: Path, label: str, seed: int, correct: np.ndarray) -> Run:
    out = tmp_path / f"{label}-s{seed}"
    out.mkdir()
    n = correct.size
    index, labels = np.arange(n)[::-1], np.zeros(n, dtype=np.int64)  # any order: the report sorts by index
    preds = {"16x16": np.stack([index, labels, np.where(correct[::-1], 0, 1)])}
    np.savez(out / "predictions.npz", **preds)
    top1 = float(correct.mean())
    rows = [
        {"size": [16, 16], "shuffled": False, "top1": top1, "top5": 1.0, "loss": 1.0, "count": n},
        {"size": [16, 16], "shuffled": True, "top1": top1 / 2, "top5": 1.0, "loss": 2.0, "count": n},
        {"size": [24, 24], "shuffled": False, "top1": top1 - 0.1, "top5": 1.0, "loss": 1.5, "count": n},
    ]
    evaluated = {"train_size": [16, 16], "rows": rows, "predictions": str(out / "predictions.npz")}
    summary = {
        "params": 1_500_000,
        "gflops": 0.01,
        "step_time_s": 0.02 * (1 + (label == "liere8")),
        "step": 1500,
    }
    return Run(label, seed, [], out, summary=summary, eval=evaluated)


def test_the_report_compares_arms_from_their_predictions(tmp_path):
    rng = np.random.default_rng(0)
    runs = [
        _fake_run(tmp_path, "ape", 0, rng.random(200) < 0.6),
        _fake_run(tmp_path, "liere8", 0, rng.random(200) < 0.8),
        _fake_run(tmp_path, "ape", 1, rng.random(200) < 0.6),
        _fake_run(tmp_path, "liere8", 1, rng.random(200) < 0.8),
        Run("string", 0, [], tmp_path / "string-s0", error="exit status 1"),
        _fake_run(tmp_path, "rope_mixed", 0, np.arange(200) < 150),
    ]
    cfg = OmegaConf.create({
        "config_path": str(tmp_path / "compass2d.yaml"), "model": {"name": "vit_nano_patch4"},
        "data": {"dataset": "compass2d", "val_split": "val"}, "train": {"epochs": 3, "precision": "fp32"},
    })  # fmt: skip
    stats, files = write_report(
        runs, tmp_path, cfg, command="python launch/compare.py x", resamples=200, wall_s=90
    )
    assert [f.name for f in files] == ["report.md", "report.json", "accuracy_vs_resolution.png"]
    arms = {a["label"]: a for a in stats["arms"]}
    assert stats["reference"] == "ape" and stats["train_size"] == "16x16"
    assert arms["string"]["top1_mean"] is None and arms["string"]["finished"] == 0
    assert arms["liere8"]["top1_mean"] == pytest.approx(
        np.mean([r.eval["rows"][0]["top1"] for r in runs[1:4:2]])
    )
    lo, hi = arms["liere8"]["delta_ci95"]
    assert lo <= arms["liere8"]["delta_vs_reference"] <= hi and "delta_ci95" not in arms["ape"]
    assert arms["liere8"]["step_time_s"] == pytest.approx(0.04)
    assert json.loads((tmp_path / "report.json").read_text())["wall_s"] == 90
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# compass2d: ape, liere8, string, rope_mixed\n\n`python launch/compare.py x`")
    assert "fp32; 2 seed(s) per arm (finished fewer: string 0, rope_mixed 1)\n" in text
    assert "| rope_mixed | 75.0 (1 seed) |" in text, "one seed has no spread over seeds to show"
    assert "| rope_mixed | 75.0 (1 seed) | 65.0 (1 seed) |" in text  # the resolution table, likewise
    liere8_row = next(line for line in text.splitlines() if line.startswith("| liere8 |"))
    assert " ± " in liere8_row
    assert (
        "| string | no finished run |" in text and "| string-s0 | - | - | - | - | - | exit status 1 |" in text
    )
    assert "| encoding | 16x16 | 24x24 |" in text and "2.00x |" in text
    assert "## Differences over seeds\n\n1 pair of arms tested" in text  # rope_mixed has one seed: untested
    welch = [t for t in stats["seed_tests"] if t["welch_p"] is not None]
    assert [(t["a"], t["b"]) for t in welch] == [("ape", "liere8")]
    assert arms["liere8"]["seeds_welch_p_vs_reference"] == welch[0]["welch_p"]
    assert f"| {welch[0]['welch_p']:.3f} |" in liere8_row
    assert (
        "this command's wall time 1.5 min; training 4 min (each run's steps" in text
    )  # 1500 x (3 x 0.02 + 2 x 0.04) s = 3.5 min


def test_bootstrap_means_resample_the_samples():
    samples = bootstrap(np.array([0.0, 1.0, 1.0, 1.0]), 500, seed=1)
    assert samples.shape == (500,) and 0.0 <= samples.min() and samples.max() <= 1.0
    assert samples.mean() == pytest.approx(0.75, abs=0.03)


def test_evaluation_outputs_keep_the_shuffled_rows_apart(tmp_path):
    rows = [
        {"size": [16, 16], "shuffled": False, "top1": 0.9, "top5": 1.0, "loss": 0.3, "count": 10},
        {"size": [16, 16], "shuffled": True, "top1": 0.4, "top5": 0.8, "loss": 1.9, "count": 10},
    ]
    result = {"weights": "w", "rows": rows, "predictions": str(tmp_path / "predictions.npz")}
    preds = {row_name(r): np.zeros((3, 10), dtype=np.int64) for r in rows}
    write_outputs(result, preds, tmp_path, title="run on digits/val")
    assert json.loads((tmp_path / "eval.json").read_text())["rows"] == rows
    md = (tmp_path / "eval.md").read_text()
    assert "| 16x16 | 90.00 |" in md and md.endswith("\nPatches shuffled at 16x16: top-1 40.00%\n")
    assert (tmp_path / "eval.png").is_file() and not (tmp_path / "eval_resolution.md").exists()
    with np.load(tmp_path / "predictions.npz") as saved:
        assert sorted(saved) == ["16x16", "16x16 shuffled"]


def test_slurm_flags_time_limits_and_the_rank_launcher_pickle():
    slurm = pytest.importorskip("liere.orchestration.slurm")
    flags = slurm.parse_flags(["--nodes", "2", "--gpus-per-node", "0", "train.epochs=1"])
    assert (flags.nodes, flags.gpus_per_node, flags.overrides, flags.time) == (
        2,
        0,
        ["train.epochs=1"],
        "48:00:00",
    )
    with pytest.raises(SystemExit):
        slurm.parse_flags(["--node", "2"])  # no abbreviations
    assert [slurm.parse_time(t) for t in ("90", "1:30:00", "1:30:01", "2-00", "0:00:10")] == [
        90,
        90,
        91,
        2880,
        1,
    ]
    with pytest.raises(argparse.ArgumentTypeError):
        slurm.parse_time("soon")
    task = slurm.RankLauncher("c.yaml", ["a=1"], "runs/x")
    again = pickle.loads(pickle.dumps(task))  # what submitit stores for a (re)start: no process state
    assert (again.config, again.overrides, again.out_dir, again._child) == ("c.yaml", ["a=1"], "runs/x", None)


def test_command_lines_take_their_help_from_the_docstring():
    p = command_parser("Do one thing.\n\n    python launch/x.py\n")
    assert p.description == "Do one thing." and "python launch/x.py" in p.epilog and not p.allow_abbrev


@pytest.mark.parametrize("worker", [False, True])
def test_exit_without_teardown_keeps_the_status_runs_atexit_and_waits_for_a_working_thread(tmp_path, worker):
    """The launch/ scripts end through it; a non-daemon thread still writing makes it a plain exit."""
    script = (
        "import atexit, pathlib, threading, time\n"
        "from liere.orchestration.cli import exit_without_teardown\n"
        f"out = pathlib.Path({str(tmp_path)!r})\n"
        "atexit.register(lambda: (out / 'atexit').write_text('ran'))\n"
        f"if {worker}:\n"
        "    threading.Thread(target=lambda: (time.sleep(0.5), (out / 'thread').write_text('done'))).start()\n"
        "print('before', flush=False)\n"
        "exit_without_teardown(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3 and proc.stdout == "before\n", proc.stderr[-2000:]
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").exists() == worker
