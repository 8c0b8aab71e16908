"""The compass benchmarks: the escape-time study trains on what the engine trains on (inputs normalised as
the loaders do), and the mark-contrast probe tells marks that differ in direction from marks that
differ only in brightness."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import escape_time
from _mlflow_store import sqlite_store
from commutators import commutator_stats
from escape_time import split_arrays
from mark_contrast import mark_cosines
from plateau_exit import first_exit, run_classes, save_rows
from plateau_exit import main as plateau_exit_main

from liere import encodings
from liere.engine.config import load_config
from liere.engine.metrics import HISTORY, keep_history_until, read_history

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["compass2d.yaml", "compass3d.yaml"])
def test_study_inputs_have_the_loaders_scale(config):
    """Pixels in [0, 255] against statistics in [0, 1]: unscaled, the inputs would be ~255x too large."""
    cfg = load_config(REPO / "configs" / config, [])
    x, y = split_arrays(cfg, cfg.data.val_split)
    assert x.dtype == torch.float32 and x.shape[0] == y.shape[0]
    assert x.shape[2:] == tuple(cfg.model.img_size)  # channels first, the training size
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    assert per_channel.mean(1).abs().max() < 0.2
    assert ((per_channel.std(1) > 0.5) & (per_channel.std(1) < 2.0)).all()
    assert set(y.tolist()) == set(range(int(y.max()) + 1))


def test_study_inputs_are_the_images_the_shards_store():
    """stored: what the loaders decode (compass2d: 4:4:4 JPEG, close to the drawn pixels); jpeg420: the
    revision-1 storage, whose smeared marks the engine trained on until then."""
    cfg = load_config(REPO / "configs" / "compass2d.yaml", [])
    raw, labels = split_arrays(cfg, cfg.data.val_split, "raw")
    stored, same = split_arrays(cfg, cfg.data.val_split, "stored")
    smeared, _ = split_arrays(cfg, cfg.data.val_split, "jpeg420")
    assert torch.equal(labels, same) and stored.shape == raw.shape == smeared.shape
    assert (stored - raw).abs().amax() < 0.5 * (smeared - raw).abs().amax()
    with pytest.raises(SystemExit, match="--inputs"):
        split_arrays(cfg, cfg.data.val_split, "png")


def test_study_draws_a_larger_training_split_whose_first_samples_are_the_default_ones():
    """--train-samples: more of the same generated images (the memorisation test of mean pooling), the
    default split as its start and the normalisation unchanged; a fixed-size set refuses it."""
    cfg = load_config(REPO / "configs" / "compass2d.yaml", [])
    x, y = split_arrays(cfg, cfg.data.train_split, "raw")
    more, more_y = split_arrays(cfg, cfg.data.train_split, "raw", train_samples=len(y) + 40)
    assert (
        more.shape[0] == len(y) + 40 and torch.equal(more[: len(y)], x) and torch.equal(more_y[: len(y)], y)
    )
    digits = load_config(REPO / "configs" / "digits.yaml", [])
    with pytest.raises(SystemExit, match="'digits' is not generated"):
        split_arrays(digits, digits.data.train_split, "raw", train_samples=100)


def test_escape_study_varies_the_weights_or_the_order_alone_and_reuses_the_run_both_share(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(escape_time, "RESULTS", tmp_path)
    common = ["--arms", "rope_mixed", "--seeds", "2", "--budget", "4", "--eval-every", "2", "--study", "s"]
    escape_time.main([*common, "--vary", "init"])
    escape_time.main([*common, "--vary", "order"])
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    seeds = [(r["vary"], r["init_seed"], r["order_seed"], r["reused"]) for r in rows]
    assert seeds == [
        ("init", 0, 0, False),
        ("init", 1, 0, False),
        ("order", 0, 0, True),
        ("order", 0, 1, False),
    ]
    loss = [r["curve"][-1][2] for r in rows]
    assert loss[2] == loss[0]  # the shared run, read back
    assert len({loss[0], loss[1], loss[3]}) == 3  # other weights, or other batches: another loss
    report = (tmp_path / "s.md").read_text()
    assert (
        "| rope_mixed, init seed varies | 2 |" in report and "| rope_mixed, order seed varies | 2 |" in report
    )


def test_marks_of_both_compass_sets_give_distinct_tokens():
    for config in ("compass2d.yaml", "compass3d.yaml"):
        cfg = load_config(REPO / "configs" / config, [])
        assert np.median(mark_cosines(cfg, samples=40, seeds=1)) < 0.8, config


def test_a_mark_that_differs_only_in_brightness_gives_the_same_token():
    """Red at half brightness is nearly parallel to red after normalisation: LayerNorm removes the length."""
    cfg = load_config(REPO / "configs" / "compass2d.yaml", [])
    assert np.median(mark_cosines(cfg, samples=40, seeds=1, values="255,40,40;128,20,20")) > 0.9


def test_plateau_exit_ignores_a_dip_that_does_not_hold():
    chance = float(np.log(6))
    history = [(50 * i, chance) for i in range(1, 11)]
    history[2] = (150, 0.5 * chance)  # one noisy batch below the level: not an exit
    history[6:] = [(50 * i, 0.6 * chance) for i in range(7, 11)]  # from step 350 on, it holds
    assert first_exit(history, 0.9 * chance, hold=3) == 350
    assert first_exit(history, 0.9 * chance, hold=1) == 150
    assert first_exit(history[:8], 0.9 * chance, hold=3) is None, "two points are not three"


def test_plateau_exit_names_a_run_without_weights_and_takes_the_class_count_instead(tmp_path):
    (tmp_path / "summary.json").write_text("{}")  # a run copied from docs/evidence: no weights kept
    with pytest.raises(SystemExit, match=r"model\.safetensors: no weights kept.*--classes"):
        run_classes(tmp_path, None)
    assert run_classes(tmp_path, 6) == 6


def test_plateau_exit_reads_a_real_store_and_leaves_out_a_run_tracked_elsewhere(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = sqlite_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    run_id = client.create_run("0").info.run_id
    chance = float(np.log(6))
    for step, frac in [(50, 1.0), (100, 0.95), (150, 0.8), (200, 0.7), (250, 0.6)]:
        client.log_metric(run_id, "train/loss", frac * chance, step=step)
    for name, rid in [("tracked-s0", run_id), ("copied-s0", "0" * 32)]:
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "summary.json").write_text(json.dumps({"mlflow_run_id": rid}))
    out = tmp_path / "rows.json"
    args = [str(tmp_path / "sweep"), "--classes", "6", "--tracking-uri", uri, "--json", str(out)]
    assert plateau_exit_main(args) == 0
    rows = json.loads(out.read_text())
    assert [(r["run"], r["exit_step"], r["last_step"]) for r in rows] == [("tracked-s0", 150, 250)]
    assert "copied-s0: left out" in capsys.readouterr().err


def test_plateau_exit_reads_a_runs_own_history_without_opening_a_store(tmp_path):
    chance = float(np.log(6))
    run = tmp_path / "liere8-s3"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"mlflow_run_id": "0" * 32, "sweep": [{"top1": 0.9}]}))
    lines = [
        {"step": 50 * i, "epoch": 0, "train/loss": (1.0 if i < 4 else 0.5) * chance} for i in range(1, 9)
    ]
    (run / HISTORY).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 450, "train/lo')
    out = tmp_path / "rows.json"
    out.write_text(json.dumps([{"run": "liere8-s3", "exit_step": 1}, {"run": "ape-s0", "exit_step": None}]))
    store = tmp_path / "never.db"
    args = [str(run), "--classes", "6", "--tracking-uri", f"sqlite:///{store}", "--json", str(out), "--merge"]
    assert plateau_exit_main(args) == 0
    rows = json.loads(out.read_text())
    assert [(r["run"], r["exit_step"]) for r in rows] == [("ape-s0", None), ("liere8-s3", 200)]
    assert rows[1]["last_step"] == 400, "the line cut short by a kill is left out"
    assert not store.exists(), "a run with its own history needs no MLflow store"


def test_a_resumed_runs_history_drops_what_was_logged_after_its_checkpoint(tmp_path):
    path = tmp_path / HISTORY
    path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (10, 20, 30)) + "{cut")
    keep_history_until(path, 20)
    assert [r["step"] for r in read_history(path)] == [10, 20]
    keep_history_until(path, 0)  # a fresh start in the same folder
    assert read_history(path) == []


def test_merged_rows_keep_other_runs_and_replace_the_measured_ones(tmp_path):
    out = tmp_path / "rows.json"
    save_rows(out, [{"run": "b-s0", "v": 1}, {"run": "a-s1", "v": 1}], merge=True)  # no file yet
    save_rows(out, [{"run": "a-s1", "v": 2}, {"run": "c-s0", "v": 2}], merge=True)
    assert json.loads(out.read_text()) == [
        {"run": "a-s1", "v": 2},
        {"run": "b-s0", "v": 1},
        {"run": "c-s0", "v": 2},
    ]
    save_rows(out, [{"run": "c-s0", "v": 3}], merge=False)
    assert json.loads(out.read_text()) == [{"run": "c-s0", "v": 3}]


@pytest.mark.parametrize("block_size", [2, 8, 64])
def test_commutators_are_zero_for_plane_rotations_and_near_sqrt_2_over_g_for_random_blocks(block_size):
    """2 x 2 skew blocks always commute (LieRE_2 is RoPE-Mixed); random g x g ones do not."""
    torch.manual_seed(0)
    enc = encodings.build(
        "liere", head_dim=64, num_heads=2, depth=3, num_axes=3, grid_shape=[4, 4, 4],
        generator_init="small", block_size=block_size,
    )  # fmt: skip
    stats = commutator_stats(enc)
    if block_size == 2:
        assert stats["commutator"] < 1e-12
    else:
        assert stats["commutator"] == pytest.approx((2 / block_size) ** 0.5, rel=0.15)
    assert stats["norm"] > 0
