"""The proximal sparsity step in a real training: 2 DeepSpeed ranks over gloo, ZeRO-2, fp32.

Under ZeRO-2 the weights each step starts from are the optimizer's fp32 partitions, not the module's
parameters: a proximal step that wrote only the module would be undone by the next step, and the
exported weights (consolidated from the checkpoint's partitions) would hold no exact zeros.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import liere
from liere.encodings.sparsity import tile_group_norms
from liere.engine.metrics import HISTORY, read_history

from ._train import run_train

pytestmark = pytest.mark.slow


def test_proximal_step_zeroes_whole_groups_in_the_optimizer_weights_and_the_report_counts_them(
    tmp_path, digits_root
):
    weight = 60.0  # over 30 steps of lr <= 2e-3: a fall of the order of the groups' norms at init
    proc, out = run_train(
        tmp_path,
        digits_root,
        [
            "model.encoding=liere64", "model.generator_init=small", "train.precision=fp32", "train.zero_stage=2",
            "sparsity.method=proximal", f"sparsity.weight={weight}", "sparsity.start_epoch=0",
            "eval.shuffle_patches=false", "tracking.enabled=false",
        ],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    upper = load_file(str(out / "model.safetensors"))["encoding.upper"]
    enc = liere.load_model(out / "model.safetensors").encoding
    norms = tile_group_norms(enc.skew(upper), 8)
    n = norms.shape[-1]
    groups = norms[..., torch.triu(torch.ones(n, n, dtype=torch.bool))]
    dead = (groups < 1e-9).float().mean().item()  # measured: 26% of the groups, at this weight
    assert 0.1 < dead < 0.9  # whole groups at exactly 0 (clamped norms: 1e-12), the others not
    report = json.loads((out / "sparsity.json").read_text())  # made from the module's weights
    assert report["penalty_weight"] == weight and report["method"] == "proximal"
    assert report["groups_per_generator"] == 36
    assert "liere64, proximal weight 60.0" in (out / "sparsity.md").read_text()
    active = (28 * report["off_diagonal_active"] + 8 * report["diagonal_active"]) / 36
    assert active <= 1 - dead + 1e-6  # the groups at 0 in the optimizer's copy are off in the module too
    last = read_history(out / HISTORY)[-1]  # what the run logged after its last step
    assert last["step"] == 30 and last["train/sparsity_zero_groups"] == pytest.approx(dead)
    assert "train/sparsity_penalty" not in last
