"""The learned-sparsity penalty in a training run: its schedule, and its report at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import Tensor, nn

from liere.encodings.liere import LieRE
from liere.encodings.sparsity import group_penalty, report_markdown, sparsity_report


class SparsityPenalty:
    """weight(step) x group_penalty: 0 before ``start_epoch``, then a linear ramp over ``ramp_epochs``."""

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

    def __call__(self, model: nn.Module, step: int) -> Tensor | None:
        """The penalty to add to the loss at optimizer step ``step`` (None while it is 0)."""
        w = self.factor(step)
        return w * group_penalty(model.encoding, self.tile) if w > 0 else None


def reportable(model: nn.Module, tile: int) -> bool:
    """A LieRE model whose blocks hold more than one tile: there is a sparsity pattern to report."""
    enc = getattr(model, "encoding", None)
    return isinstance(enc, LieRE) and enc.block_size > tile and enc.block_size % tile == 0


def write_report(model: nn.Module, cfg: DictConfig, out_dir: Path) -> tuple[dict[str, Any], Path]:
    """sparsity.json and sparsity.md in ``out_dir``; returns the report and the markdown path."""
    report = sparsity_report(model.encoding, cfg.sparsity.tile, cfg.sparsity.threshold)
    report["penalty_weight"] = cfg.sparsity.weight
    (out_dir / "sparsity.json").write_text(json.dumps(report, indent=1))
    md = out_dir / "sparsity.md"
    md.write_text(
        f"### Learned sparsity: {cfg.model.encoding}, penalty weight {cfg.sparsity.weight}\n\n"
        + report_markdown(report)
    )
    return report, md
