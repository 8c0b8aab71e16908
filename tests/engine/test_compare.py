"""Encoding sweeps end to end: launch/compare.py and launch/evaluate.py on real runs and a real MLflow store."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ._train import DEMO, FAST, REPO, train_env

pytestmark = pytest.mark.slow
COMPARE = REPO / "launch" / "compare.py"
EVALUATE = REPO / "launch" / "evaluate.py"
TINY = [o for o in FAST if not o.startswith(("train.max_steps", "eval.sizes"))] + [
    "train.max_steps=4",
    "train.precision=fp32",
    "train.zero_stage=0",
]


def in_process(capsys, script, *argv: str) -> tuple[int, str, str]:
    """A launch/ script's main() in this process (exit status, stdout, stderr): the command's own code
    path, without a new interpreter importing torch for each call."""
    spec = importlib.util.spec_from_file_location(f"cli_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    code = module.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def evaluate_cli(capsys, *argv: str) -> tuple[int, str]:
    code, _, err = in_process(capsys, EVALUATE, *argv)
    return code, err


def compare_args(tmp_path, digits_root, *extra, seeds: int = 2) -> list[str]:
    return [
        str(DEMO), "--encodings", "ape,liere64", "--seeds", str(seeds), "--sizes", "16", "24",
        "--out", str(tmp_path / "sweep"), "--bootstrap", "300", f"data.root={digits_root}", *TINY, *extra,
    ]  # fmt: skip


def compare(tmp_path, digits_root, *extra, timeout=600):
    cmd = [sys.executable, str(COMPARE), *compare_args(tmp_path, digits_root, *extra)]
    return subprocess.run(
        cmd, cwd=tmp_path, env=train_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )


def test_a_sweep_trains_every_arm_nests_the_runs_and_reports(tmp_path, digits_root, capsys):
    from mlflow.tracking import MlflowClient

    proc = compare(tmp_path, digits_root, "--parallel", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    started = [i for i, line in enumerate(lines) if ": training (log" in line]
    ended = [i for i, line in enumerate(lines) if "done in" in line]
    assert len(started) == len(ended) == 4 and started[1] < ended[0], "two runs at once"
    sweep = tmp_path / "sweep"
    report = json.loads((sweep / "report.json").read_text())
    arms = {a["label"]: a for a in report["arms"]}
    assert list(arms) == ["ape", "liere64"] and report["reference"] == "ape"
    for arm in arms.values():
        assert arm["finished"] == 2 and len(arm["evals"]["16x16"]["seeds"]) == 2
        assert set(arm["evals"]) == {"16x16", "16x16 shuffled", "24x24", "24x24 shuffled"}
        lo, hi = arm["top1_ci95"]
        assert 0 <= lo <= arm["top1_mean"] <= hi <= 1
        assert arm["params"] > 0 and arm["step_time_s"] > 0
    assert "delta_ci95" in arms["liere64"] and "delta_ci95" not in arms["ape"]
    assert arms["liere64"]["sparsity_tile"] == 8  # dense generators get a sparsity report
    text = (sweep / "report.md").read_text()
    assert "| liere64 |" in text and "Δ vs ape" in text and (sweep / "accuracy_vs_resolution.png").is_file()

    # the seed-averaged accuracy the report gives is the one in the saved predictions
    preds = [np.load(sweep / f"ape-s{s}" / "compare_eval" / "predictions.npz")["16x16"] for s in (0, 1)]
    acc = np.mean([(p[1] == p[2]).mean() for p in preds])
    assert arms["ape"]["top1_mean"] == pytest.approx(acc)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent_id = json.loads((sweep / "sweep.json").read_text())["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and "top1/liere64" in parent.data.metrics
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(children) == 4
    assert all("eval/top1 24x24 shuffled" in c.data.metrics for c in children)
    assert {c.data.params["model.encoding"] for c in children} == {"ape", "liere64"}
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"report.md", "report.json"} <= artifacts

    # run again: nothing retrains, the same parent run is reused
    again = compare(tmp_path, digits_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, kept") == 4
    assert json.loads((sweep / "sweep.json").read_text())["parent_run_id"] == parent_id

    # --export: the results without weights, each run's training history kept (one rebuilt from the
    # MLflow store, as for a run trained before the engine kept it); the plateau exits read from the
    # exported folder alone; copied back, the sweep counts every run as finished
    history = (sweep / "liere64-s1" / "history.jsonl").read_text()
    (sweep / "liere64-s1" / "history.jsonl").unlink()
    evidence = tmp_path / "evidence"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
        code, out, err = in_process(
            capsys, COMPARE, *compare_args(tmp_path, digits_root, "--export", str(evidence))
        )
    assert code == 0 and "exported 4 finished runs" in out, err[-3000:]
    assert {f.name for f in evidence.iterdir() if f.is_file()} >= {"report.md", "report.json", "sweep.json"}
    for run in ("ape-s0", "ape-s1", "liere64-s0", "liere64-s1"):
        kept = {str(f.relative_to(evidence / run)) for f in (evidence / run).rglob("*") if f.is_file()}
        assert {"summary.json", "config.yaml", "history.jsonl", "compare_eval/eval.json"} <= kept, kept
        assert not {f for f in kept if f.endswith(".safetensors") or f.startswith("checkpoints")}, kept
        assert ({"sparsity.json", "sparsity.md"} <= kept) == run.startswith("liere64"), kept  # per layer
    rebuilt = [
        json.loads(line) for line in (evidence / "liere64-s1" / "history.jsonl").read_text().splitlines()
    ]
    logged = [json.loads(line) for line in history.splitlines()]
    assert [(r["step"], r["train/loss"]) for r in rebuilt] == [(r["step"], r["train/loss"]) for r in logged]
    exits = tmp_path / "exits.json"
    plateau_exit = REPO / "benchmarks" / "plateau_exit.py"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/no-store.db")  # never opened
        code, out, err = in_process(
            capsys, plateau_exit, str(evidence), "--classes", "10", "--json", str(exits)
        )
    assert code == 0, err[-3000:]
    assert [r["run"] for r in json.loads(exits.read_text())] == [
        "ape-s0",
        "ape-s1",
        "liere64-s0",
        "liere64-s1",
    ]
    assert not (tmp_path / "no-store.db").exists()
    resumed = tmp_path / "resumed"
    shutil.copytree(evidence, resumed)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
        code, out, err = in_process(
            capsys, COMPARE, *compare_args(tmp_path, digits_root, "--out", str(resumed))
        )
    assert code == 0 and out.count("finished earlier, kept") == 4, err[-3000:]

    # --report-only over a sweep with runs not yet trained: the finished ones are reported, exit 0,
    # the parent run FINISHED, and the runs still to train are named
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
        code, out, err = in_process(
            capsys, COMPARE, *compare_args(tmp_path, digits_root, "--report-only", seeds=3)
        )
    assert code == 0, err[-3000:]
    assert "not finished, so not in the report: ape-s2, liere64-s2" in out
    partial = json.loads((sweep / "report.json").read_text())
    assert [a["finished"] for a in partial["arms"]] == [2, 2]
    assert client.get_run(parent_id).info.status == "FINISHED" and not (sweep / "ape-s2").exists()

    # evaluate.py on one run: resolutions, shuffling, its own output folder
    out = tmp_path / "eval"
    code, err = evaluate_cli(
        capsys, str(sweep / "liere64-s0"), "--sizes", "16", "32", "--shuffle", "--out", str(out)
    )
    assert code == 0, err[-3000:]
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert [(r["size"], r["shuffled"]) for r in rows] == [
        ([16, 16], False), ([16, 16], True), ([32, 32], False), ([32, 32], True),
    ]  # fmt: skip
    assert all(r["count"] == 360 for r in rows)
    assert "Patches shuffled at 16x16" in (out / "eval.md").read_text()

    # another position scheme, the same weights: rescale equals LieRE's proportional on the training
    # grid and departs from it beyond; a scheme that does not exist, or an encoding without one, is named
    code, err = evaluate_cli(
        capsys, str(sweep / "liere64-s0"), "--sizes", "16", "32", "--positions", "rescale"
    )
    assert code == 0, err[-3000:]
    moved = json.loads((sweep / "liere64-s0" / "eval_positions-rescale" / "eval.json").read_text())
    assert (
        moved["positions"] == "rescale"
        and json.loads((out / "eval.json").read_text())["positions"] == "proportional"
    )
    assert moved["rows"][0]["top1"] == rows[0]["top1"] and moved["rows"][0]["loss"] == pytest.approx(
        rows[0]["loss"]
    )
    assert moved["rows"][1]["loss"] != pytest.approx(rows[2]["loss"])
    with pytest.MonkeyPatch.context() as env:  # exported with the run: the evaluation under another scheme
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
        code, _, err = in_process(
            capsys, COMPARE, *compare_args(tmp_path, digits_root, "--export", str(evidence))
        )
    assert code == 0 and (evidence / "liere64-s0" / "eval_positions-rescale" / "eval.json").is_file(), err
    for run, scheme, named in [
        ("liere64-s0", "sideways", "not a position scheme"),
        ("ape-s0", "rescale", "no position scheme"),
    ]:
        code, err = evaluate_cli(capsys, str(sweep / run), "--positions", scheme)
        assert code != 0 and named in err and scheme in err, err[-2000:]


def test_bad_sweeps_fail_before_anything_runs(tmp_path, digits_root, capsys):
    proc = compare(tmp_path, digits_root, "--variant", "broken:model.encoding=nope")
    assert proc.returncode == 2 and "nope" in proc.stderr and not (tmp_path / "sweep").exists()
    proc = compare(tmp_path, digits_root, "--variant", "no-overrides")
    assert proc.returncode == 2 and "LABEL:KEY=VALUE" in proc.stderr
    code, err = evaluate_cli(capsys, str(tmp_path / "nowhere"), "--sizes", "16")
    assert code == 2 and "checkpoint not found" in err
