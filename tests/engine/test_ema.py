"""The weight average (``train.ema``) and ``train.init_from`` in real trainings: DeepSpeed ranks over gloo.

One ZeRO-3 run (parameters partitioned over 2 ranks) checkpoints every step: each checkpoint's average
must be ``decay * previous + (1 - decay) * weights`` (weights consolidated by DeepSpeed's own
zero_to_fp32), the export and the ``ema/`` evaluation must be that average, and a resume from the middle
must end bit for bit where the straight run did. A second run starts from the first one's directory at
twice the size, with LAMB in bf16 (DeepSpeed's per-tensor wrapper at stage 0) and an average of its own.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

import liere
from liere.engine.checkpoint import consolidated_state_dict, step_tag
from liere.engine.evaluate import evaluate
from liere.engine.init_from import load_into

from ._train import run_train, summary

pytestmark = pytest.mark.slow
DECAY = 0.5  # large steps of the average, so that a wrong rule or layout shows in 4 steps
COMMON = [
    "model.encoding=ape",
    "train.precision=fp32",
    "train.zero_stage=3",
    f"train.ema={DECAY}",
    "train.max_steps=4",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=10",
    "eval.shuffle_patches=false",
]


def _val_loader(digits_root, size):
    from pipelines import build_loader

    return build_loader(
        "webdataset", root=str(digits_root), dataset="digits", split="val", batch_size=64, train=False,
        image_size=size, rank=0, world_size=1, workers=1,
    )  # fmt: skip


def _averages(out):
    ckpt = out / "checkpoints"
    return [load_file(str(ckpt / step_tag(s) / "ema.safetensors")) for s in range(1, 5)], ckpt


def test_ema_under_zero3_follows_its_rule_exports_evaluates_and_resumes_exactly(tmp_path, digits_root):
    proc, out = run_train(tmp_path, digits_root, COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ema, ckpt = _averages(out)
    for step in (2, 3, 4):
        weights = consolidated_state_dict(ckpt, step_tag(step))
        before, after = ema[step - 2], ema[step - 1]
        assert after.keys() == weights.keys()
        for name, w in weights.items():
            want = DECAY * before[name] + (1 - DECAY) * w
            assert torch.allclose(after[name], want, atol=1e-6), (step, name)
        assert not torch.equal(after["head.weight"], weights["head.weight"])

    exported = load_file(str(out / "model_ema.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in ema[-1].items())
    result = summary(out)
    ema_model = liere.load_model(out / "model_ema.safetensors").eval()
    mine = evaluate(ema_model, _val_loader(digits_root, 16), "cpu")
    assert result["ema"]["count"] == mine["count"] == 360
    assert mine["loss"] == pytest.approx(result["ema"]["loss"], rel=1e-4)
    assert "EMA (0.5) val top-1" in proc.stdout

    # the source's evaluation at the training size, reproduced by a fresh model through init_from
    spec = liere.models.io.read_spec(out / "model.safetensors")
    fresh = liere.create_model(spec["name"], **spec["kwargs"])
    load_into(fresh, out)
    again = evaluate(fresh.eval(), _val_loader(digits_root, 16), "cpu")
    assert again["top1"] == pytest.approx(result["sweep"][0]["top1"], abs=1 / 360)
    assert again["loss"] == pytest.approx(result["sweep"][0]["loss"], rel=1e-4)

    # resume from step 2 of a copy: the average and the weights end where the straight run's did
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    for step in (1, 2):
        shutil.copytree(ckpt / step_tag(step), resumed / "checkpoints" / step_tag(step))
    (resumed / "checkpoints" / "latest").write_text(step_tag(2))
    proc, _ = run_train(tmp_path, digits_root, [*COMMON, "tracking.enabled=false"], out="resumed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and ": step 2" in proc.stdout
    end, _ = _averages(resumed)
    assert all(torch.equal(end[-1][k], v) for k, v in ema[-1].items())
    a, b = load_file(str(out / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a fresh run from that directory at twice the size: LAMB in bf16 at ZeRO-0, its own average
    proc, big = run_train(
        tmp_path, digits_root,
        [
            f"train.init_from={out}", "model.encoding=ape", "model.img_size=[32,32]", "eval.sizes=[32]",
            "optim.name=lamb", "train.precision=bf16", "train.zero_stage=0", "train.ema=0.9",
            "train.max_steps=2", "tracking.enabled=false", "eval.shuffle_patches=false",
        ],
        nproc=1, out="big",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"initialised from {out / 'model.safetensors'}" in proc.stdout
    assert "encoding.pos_embed resampled 4x4 -> 8x8" in proc.stdout
    assert summary(big)["step"] == 2 and summary(big)["sweep"][0]["size"] == [32, 32]
    assert load_file(str(big / "model_ema.safetensors"))["encoding.pos_embed"].shape == (1, 64, 128)
