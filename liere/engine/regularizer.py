"""Learned sparsity in a training run: the group-lasso penalty or its proximal step, their schedule,
and the report at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from liere.encodings.liere import LieRE
from liere.encodings.sparsity import group_penalty, group_soft_threshold, report_markdown, sparsity_report

METHODS = ("penalty", "proximal")


class SparsitySchedule:
    """weight(step): 0 before ``start_epoch``, then a linear ramp to ``weight`` over ``ramp_epochs``."""

    def __init__(self, cfg: DictConfig, steps_per_epoch: int) -> None:
        s = cfg.sparsity
        self.weight, self.tile = float(s.weight), int(s.tile)
        self.start = s.start_epoch * steps_per_epoch
        self.ramp = s.ramp_epochs * steps_per_epoch

    def factor(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if self.ramp <= 0:
            return self.weight
        return self.weight * min(1.0, (step - self.start + 1) / self.ramp)


class SparsityPenalty(SparsitySchedule):
    """weight(step) x group_penalty, added to the loss (``sparsity.method: penalty``)."""

    def __call__(self, model: nn.Module, step: int) -> Tensor | None:
        """The penalty to add to the loss at optimizer step ``step`` (None while it is 0)."""
        w = self.factor(step)
        return w * group_penalty(model.encoding, self.tile) if w > 0 else None


class SparsityProximal(SparsitySchedule):
    """After each optimizer step, every coupling group's norm falls by weight(step) x its size weight
    x the encoding's learning rate; groups below that become exactly 0 (``sparsity.method: proximal``).

    Under ZeRO 1/2 (and DeepSpeed's bf16 optimizer) the weights that the next step starts from are
    the optimizer's fp32 copy, partitioned over the ranks: the new value is read whole from there and
    written to it as well as to the module, on every rank alike (the read is a collective)."""

    zero_groups: float | Tensor = 0.0  # the share of coupling groups at exactly 0 after the last step

    @torch.no_grad()
    def __call__(self, engine: Any, step: int) -> None:
        """Shrink the generators after optimizer step ``step`` (1-based: the step just taken)."""
        w = self.factor(step - 1)
        if w <= 0 or not engine.was_step_applied():  # (fp16: a step skipped on overflow shrinks nothing)
            return
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

        enc = engine.module.encoding
        param = enc.upper
        # every rank of a ZeRO 1/2 optimizer has the attribute, None where its partition holds none of
        # the parameter; the read is a collective, so all of them take this branch
        partitioned = hasattr(param, "_hp_mapping") or hasattr(param, "ds_id")
        current = safe_get_full_fp32_param(param) if partitioned else param.data.float()
        new, self.zero_groups = group_soft_threshold(enc, current, self.tile, w * encoding_lr(engine))
        if partitioned:
            safe_set_full_fp32_param(param, new)
        param.data.copy_(new.to(param.dtype))


def sparsity_steps(
    cfg: DictConfig, steps_per_epoch: int
) -> tuple[SparsityPenalty | None, SparsityProximal | None]:
    """What ``sparsity`` asks of the training step: (the loss penalty, the proximal step); None when off."""
    s = cfg.sparsity
    if not s.weight:
        return None, None
    if s.method == "proximal":
        return None, SparsityProximal(cfg, steps_per_epoch)
    return SparsityPenalty(cfg, steps_per_epoch), None


def sparsity_problem(model: nn.Module, cfg: DictConfig) -> str | None:
    """Why the model's generators cannot be cut into ``sparsity.tile`` tiles (None: they can, or off)."""
    s = cfg.sparsity
    block = getattr(getattr(model, "encoding", None), "block_size", None)
    if not s.weight or block is None or block % s.tile == 0:
        return None
    return (
        f"sparsity.tile={s.tile} must divide the LieRE generator block size {block} "
        f"(model.encoding={cfg.model.encoding!r}); use a tile of {block} or a divisor of it"
    )


def encoding_lr(engine: Any) -> float:
    """The learning rate of the position-encoding parameter group (``optim.param_groups``' "encoding")."""
    for group in engine.optimizer.param_groups:
        if group.get("name") == "encoding":
            return float(group["lr"])
    raise ValueError(
        "sparsity: the optimizer has no 'encoding' parameter group (no LieRE generators to shrink)"
    )


def reportable(model: nn.Module, tile: int, shrunk: bool = False) -> bool:
    """A LieRE model whose blocks hold more than one tile (a sparsity pattern to report), or, when
    ``shrunk`` (a sparsity term was on), one tile each: then the report counts the blocks still
    turning, since a block shrunk to 0 rotates its channels by nothing."""
    enc = getattr(model, "encoding", None)
    if not isinstance(enc, LieRE) or enc.block_size % tile:  # a tile wider than the block divides nothing
        return False
    return enc.block_size > tile or shrunk


def write_report(model: nn.Module, cfg: DictConfig, out_dir: Path) -> tuple[dict[str, Any], Path]:
    """sparsity.json and sparsity.md in ``out_dir``; returns the report and the markdown path."""
    report = sparsity_report(model.encoding, cfg.sparsity.tile, cfg.sparsity.threshold)
    report["penalty_weight"], report["method"] = cfg.sparsity.weight, cfg.sparsity.method
    (out_dir / "sparsity.json").write_text(json.dumps(report, indent=1))
    md = out_dir / "sparsity.md"
    how = f"{cfg.sparsity.method} weight {cfg.sparsity.weight}" if cfg.sparsity.weight else "no sparsity term"
    md.write_text(f"### Learned sparsity: {cfg.model.encoding}, {how}\n\n" + report_markdown(report))
    return report, md
