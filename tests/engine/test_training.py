"""Real training runs: DeepSpeed ZeRO ranks over gloo on CPU, a real MLflow store, real shards."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

import liere
from liere.engine import precision
from liere.engine.checkpoint import tag_step
from liere.engine.metrics import HISTORY, read_history

from ._train import FAST, command, run_train, summary, train_env

pytestmark = pytest.mark.slow


def mlflow_client(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def assert_two_ranks_trained(proc, out, tmp_path, stage: int) -> None:
    """30 steps on 2 ranks at this ZeRO stage, logged to MLflow, and the loss fell."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = summary(out)
    assert result["step"] == 30
    client = mlflow_client(tmp_path)
    losses = [m.value for m in client.get_metric_history(result["mlflow_run_id"], "train/loss")]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["world_size"] == "2" and run.info.status == "FINISHED"
    assert run.data.params["train.zero_stage"] == str(stage)
    assert "ZeRO-" + str(stage) in proc.stdout


def test_zero_1_trains_two_ranks_and_the_loss_falls(tmp_path, digits_root):
    """ZeRO-1 here; ZeRO-2 and ZeRO-3 in the MLflow and export tests below (same assertions)."""
    proc, out = run_train(tmp_path, digits_root, ["train.zero_stage=1"])
    assert_two_ranks_trained(proc, out, tmp_path, 1)


def test_mlflow_store_holds_params_metrics_and_artifacts(tmp_path, digits_root):
    proc, out = run_train(
        tmp_path, digits_root, ["train.zero_stage=2", "eval.sizes=[16,32]", "eval.canvas_sizes=[24]"]
    )
    assert_two_ranks_trained(proc, out, tmp_path, 2)
    run_id = summary(out)["mlflow_run_id"]
    client = mlflow_client(tmp_path)
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "demo"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view
    params = run.data.params
    assert params["model.encoding"] == "liere8" and params["data.dataset"] == "digits"
    # the automatic precision, resolved on this machine's CPU, reaches the params and the first line
    chosen = precision.resolve("auto", torch.device("cpu"))
    assert params["train.precision"] == chosen.name and params["train.precision_requested"] == "auto"
    assert params["train.precision_reason"] == chosen.reason
    lines = proc.stdout.splitlines()  # rank 0 says it before anything of its own (rank 1 may print first)
    first_model_line = next(i for i, line in enumerate(lines) if line.startswith("vit_nano_patch4 (liere8)"))
    assert f"precision {chosen.name} ({chosen.reason})" in lines[:first_model_line]
    assert run.data.tags["mlflow.note.content"].startswith("vit_nano_patch4 with liere8 on digits at 16x16")
    inputs = {i.dataset.digest: i for i in run.inputs.dataset_inputs}
    splits = sorted((i.dataset.name, {t.key: t.value for t in i.tags}["split"]) for i in inputs.values())
    assert splits == [("digits", "train"), ("digits", "val")]
    manifest = digits_root / "digits" / "webdataset" / "train" / "manifest.json"
    assert hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] in inputs
    assert float(params["model.gflops_per_sample"]) > 0 and int(params["model.parameters"]) > 5e5
    metrics = run.data.metrics
    for key in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/images_per_s",
        "train/data_wait_fraction",
        "val/top1",
        "val/top5",
        "val/top1 16x16",
        "val/top1 32x32",
        "val/top1 canvas 24x24",
    ):
        assert key in metrics, key
    assert 0.0 <= metrics["train/data_wait_fraction"] <= 1.0
    for tag in ("git_commit", "host", "world_size", "slurm_job_id"):
        assert tag in run.data.tags
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {
        "config.yaml",
        "eval_resolution.md",
        "eval_resolution.png",
        "model.safetensors",
        "summary.json",
    } <= artifacts
    table = (out / "eval_resolution.md").read_text()
    assert "| 16x16 |" in table and "| 32x32 |" in table


def test_exported_weights_load_without_deepspeed_and_give_the_same_results(tmp_path, digits_root):
    proc, out = run_train(tmp_path, digits_root, ["train.precision=fp32", "train.zero_stage=3"])
    assert_two_ranks_trained(proc, out, tmp_path, 3)
    result = summary(out)
    weights = out / "model.safetensors"
    model = liere.load_model(weights).eval()
    assert model.encoding.block_size == 8
    spec = liere.models.io.read_spec(weights)
    assert spec["name"] == "vit_nano_patch4"  # configs/demo.yaml's model
    again = liere.create_model(spec["name"], checkpoint_path=weights, **spec["kwargs"])
    state = load_file(str(weights))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())
    # the same validation numbers as the engine reported, from the exported file alone
    from liere.engine.evaluate import evaluate
    from pipelines import build_loader

    loader = build_loader(
        "webdataset",
        root=str(digits_root),
        dataset="digits",
        split="val",
        batch_size=64,
        train=False,
        image_size=16,
        rank=0,
        world_size=1,
        workers=1,
    )
    mine = evaluate(model, loader, torch.device("cpu"))
    theirs = result["sweep"][0]
    assert mine["count"] == theirs["count"] == 360
    assert mine["top1"] == pytest.approx(theirs["top1"], abs=1 / 360)
    assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)


def _wait_for_step(out_dir, step, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = out_dir / "status.json"
        if status.is_file():
            try:
                if json.loads(status.read_text())["step"] >= step:
                    return
            except (json.JSONDecodeError, KeyError):
                pass
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.1)
    raise TimeoutError(f"step {step} not reached")


def test_a_run_stopped_by_sigterm_resumes_to_the_same_parameters(tmp_path, digits_root):
    common = [
        "train.precision=fp32",
        "train.zero_stage=2",
        "train.max_steps=60",
        "train.log_every=2",
        "tracking.enabled=false",
    ]
    proc, straight = run_train(tmp_path, digits_root, common, out="straight")
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "interrupted"
    args = [f"data.root={digits_root}", f"train.out_dir={out}", *FAST, *common]
    runner = subprocess.Popen(
        command(args, 2),
        cwd=tmp_path,
        env=train_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_step(out, 14, runner)
    ranks = subprocess.run(["pgrep", "-P", str(runner.pid)], capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2
    for pid in ranks:  # as Slurm does: every task gets the signal
        subprocess.run(["kill", "-TERM", pid])
    log, _ = runner.communicate(timeout=120)
    assert runner.returncode != 0
    assert "run the same command again to resume" in log
    tag = (out / "checkpoints" / "latest").read_text()
    stopped_at = tag_step(tag)
    assert 14 <= stopped_at < 60

    proc, _ = run_train(tmp_path, digits_root, common, out="interrupted")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / tag}: step {stopped_at}" in proc.stdout
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ after resume: {different[:5]}"
    # the history keeps each logged step once: what was logged after the checkpoint is logged again
    steps = [r["step"] for r in read_history(out / HISTORY)]
    assert steps == [r["step"] for r in read_history(straight / HISTORY)] == list(range(2, 61, 2))


def test_an_unreachable_tracking_server_does_not_stop_training(tmp_path, digits_root):
    env = train_env(tmp_path, MLFLOW_TRACKING_URI="http://127.0.0.1:9")  # discard port: nothing listens
    proc, out = run_train(tmp_path, digits_root, ["train.max_steps=10"], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("is unreachable") == 1
    offline = out / "mlflow_offline"
    metrics = [json.loads(line) for line in (offline / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in m for m in metrics) and any("val/top1" in m for m in metrics)
    assert (offline / "params.jsonl").is_file() and (offline / "artifacts" / "model.safetensors").is_file()


def test_a_single_process_without_launcher_trains(tmp_path, digits_root):
    proc, out = run_train(
        tmp_path, digits_root, ["train.zero_stage=0", "train.max_steps=8", "train.log_every=4"], nproc=1
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 rank(s) on cpu" in proc.stdout and summary(out)["step"] == 8


def test_dry_run_reports_parameters_and_flops(tmp_path, digits_root):
    proc, out = run_train(tmp_path, digits_root, ["--dry-run"], nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "M parameters" in proc.stdout and "GFLOPs per sample" in proc.stdout
    assert "first batch input (16, 1, 16, 16)" in proc.stdout
    assert not (out / "checkpoints").exists()
