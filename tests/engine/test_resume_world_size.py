"""Resuming on another number of ranks: real DeepSpeed ranks over gloo, a real universal conversion.

The global batch is kept (train.grad_accum is recomputed) and every epoch is one global order read
strided by the ranks, so a run that changes world size mid-epoch trains what an uninterrupted run
does, up to fp32 rounding (two ranks averaging and one rank accumulating add in another order).
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

from liere.engine.config import ConfigError
from liere.engine.reshard import loader_state, plan
from tests.engine._train import run_train

# all 12 steps inside the 44-step warmup: the learning rate then does not depend on train.max_steps,
# so the 6-step first part follows the 12-step reference's schedule. fp32 on every machine: with
# train.precision=auto a CPU with AVX512-BF16 trains in bf16, where adding in another order moves the
# weights by 9.3e-5 at stage 2 (measured on an AMD EPYC with AVX512-BF16), not the fp32 rounding bounded here
STEPS = [
    "train.checkpoint_every=6",
    "tracking.enabled=false",
    "train.log_every=6",
    "optim.warmup_epochs=1",
    "train.precision=fp32",
]


def _max_difference(a, b) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


# ZeRO-3's universal load leaves a residue (7.5e-5 after 6 steps at lr <= 2e-3, where stage 2 leaves
# 2.4e-7): its cause is not found; without the group-settings repair (reshard.restore_group_settings)
# the difference is 8.7e-4, which this bound catches
@pytest.mark.parametrize(("stage", "before", "after", "bound"), [(2, 2, 1, 1e-5), (3, 1, 2, 2e-4)])
def test_a_run_resumed_on_another_world_size_trains_what_an_uninterrupted_one_does(
    tmp_path, digits_root, stage, before, after, bound
):
    """12 steps of 2 x 16 samples: 6 on ``before`` ranks, 6 on ``after``; the reference runs all 12 on
    ``before`` (the same sums in another order: fp32 rounding apart, the same weights)."""
    common = [*STEPS, f"train.zero_stage={stage}"]
    first = [*common, f"train.grad_accum={2 // before}"]
    proc, reference = run_train(
        tmp_path, digits_root, [*first, "train.max_steps=12"], before, out="reference"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, out = run_train(tmp_path, digits_root, [*first, "train.max_steps=6"], nproc=before)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, out = run_train(tmp_path, digits_root, [*common, "train.max_steps=12"], nproc=after)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"step 6, epoch 0 (written by {before} ranks, resumed on {after} through DeepSpeed's universal "
        f"checkpoint; train.grad_accum={2 // after} keeps the global batch)" in proc.stdout
    )
    assert (out / "checkpoints" / "universal" / "step_000000006" / "CONVERTED").is_file()
    assert _max_difference(out, reference) < bound


def _cfg(batch_size: int):
    return OmegaConf.create({"config_path": "x.yaml", "data": {"batch_size": batch_size}})


def test_a_global_batch_the_new_ranks_cannot_keep_is_a_config_error(tmp_path):
    (tmp_path / "step_000000010").mkdir()
    meta = {"world_size": 4, "micro_batch": 16, "grad_accum": 1}
    with pytest.raises(ConfigError, match=r"global batch 64 .* on 3 ranks: data.batch_size=16 x 3 ranks"):
        plan(_cfg(16), 3, tmp_path, "step_000000010", meta)
    assert plan(_cfg(16), 2, tmp_path, "step_000000010", meta).grad_accum == 2
    assert plan(_cfg(16), 4, tmp_path, "step_000000010", meta).grad_accum is None


def test_the_loader_position_maps_to_the_same_samples_on_the_new_world_size():
    saved = {"epoch": 3, "batches": 6, "world_size": 4, "batch_size": 8, "seed": 0}
    moved = loader_state(saved, world_size=2, batch_size=16)
    assert moved["batches"] * 16 * 2 == 6 * 8 * 4 and moved["epoch"] == 3
    assert loader_state(saved, world_size=4, batch_size=8) == saved
