"""Resuming a checkpoint on another number of ranks (a requeue onto fewer or more nodes).

ZeRO stages 1-3 (and bf16 at stage 0) keep the optimizer state in one shard per rank, which DeepSpeed
loads only at the world size that wrote it. On a different world size the checkpoint is converted
once to DeepSpeed's universal format (``checkpoints/universal/<tag>/``, by DeepSpeed's own
``ds_to_universal``) and loaded from there with ``checkpoint.load_universal``. The global batch is
kept: ``train.grad_accum`` is recomputed so that micro batch x accumulation x ranks matches the
checkpoint's, the learning-rate schedule and the epoch's step count stay the same, and the loader's
position maps exactly (every epoch is one global order that the ranks read strided).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from liere.engine import distributed
from liere.engine.checkpoint import CheckpointError
from liere.engine.config import ConfigError

CONVERTED = "CONVERTED"  # marker of a finished conversion (it names the source folder)


@dataclass
class ResumePlan:
    """How this run loads its newest checkpoint: the tag, and whether through the universal format."""

    tag: str | None = None
    saved_world_size: int | None = None
    universal: bool = False  # the optimizer state is sharded per rank: load it through the universal form
    grad_accum: int | None = None  # set on another world size: the accumulation keeping the global batch

    def describe(self, world_size: int) -> str:
        if self.grad_accum is None:
            return ""
        how = "through DeepSpeed's universal checkpoint" if self.universal else "directly (unsharded state)"
        return (
            f" (written by {self.saved_world_size} ranks, resumed on {world_size} {how}; "
            f"train.grad_accum={self.grad_accum} keeps the global batch)"
        )


def _sharded(folder: Path) -> bool:
    """True when the optimizer state is split per rank (ZeRO 1-3, or the bf16 optimizer at stage 0)."""
    return any(folder.glob("*zero_pp_rank_*optim_states.pt")) or any(folder.glob("bf16_*optim_states.pt"))


def plan(cfg, world_size: int, checkpoint_dir: Path, tag: str | None, meta: dict[str, Any]) -> ResumePlan:
    """The resume plan for ``tag`` (its ``COMPLETE`` record is ``meta``) on ``world_size`` ranks."""
    if tag is None:
        return ResumePlan()
    saved = meta.get("world_size") or len(list((Path(checkpoint_dir) / tag).glob("rng_rank*.pt"))) or None
    if saved is None or saved == world_size:
        return ResumePlan(tag=tag, saved_world_size=saved)
    if "micro_batch" not in meta:
        raise ConfigError(
            f"{Path(checkpoint_dir) / tag} was written by {saved} ranks before checkpoints recorded their "
            f"batch layout: resume it on {saved} ranks (this run has {world_size})"
        )
    global_batch = meta["micro_batch"] * meta["grad_accum"] * saved
    per_step = cfg.data.batch_size * world_size
    if global_batch % per_step:
        raise ConfigError(
            f"{cfg.config_path}: cannot resume {tag} (global batch {global_batch} = data.batch_size "
            f"{meta['micro_batch']} x train.grad_accum {meta['grad_accum']} x {saved} ranks) on {world_size} "
            f"ranks: data.batch_size={cfg.data.batch_size} x {world_size} ranks does not divide it; choose "
            f"a data.batch_size that does"
        )
    sharded = _sharded(Path(checkpoint_dir) / tag)
    return ResumePlan(tag=tag, saved_world_size=saved, universal=sharded, grad_accum=global_batch // per_step)


def universal_folder(checkpoint_dir: Path, tag: str) -> Path:
    return Path(checkpoint_dir) / "universal" / tag


def _run_conversion(source: Path, target: Path, timeout_s: float) -> None:
    shutil.rmtree(target, ignore_errors=True)
    command = [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", str(source), "--output_folder", str(target),
        "--num_extract_workers", "1", "--num_merge_workers", "1", "--inject_missing_state",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(" | ".join(tail))
    (target.parent / "latest_universal").unlink(missing_ok=True)  # loads name the tag; no pointer
    (target / CONVERTED).write_text(json.dumps({"source": str(source)}))


def convert(checkpoint_dir: Path, tag: str, rank: int, device, timeout_s: float) -> Path:
    """The universal form of ``tag`` (rank 0 converts it once; the others wait); its folder.

    A failed conversion is a CheckpointError on every rank (none is left waiting for rank 0)."""
    source, target = Path(checkpoint_dir) / tag, universal_folder(checkpoint_dir, tag)
    problem = None
    if rank == 0 and not (target / CONVERTED).is_file():
        try:
            _run_conversion(source, target, timeout_s)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            problem = f"{type(err).__name__}: {err}"
    if distributed.any_rank(problem is not None, device):
        raise CheckpointError(
            f"converting {source} to DeepSpeed's universal checkpoint in {target} failed "
            f"({problem or 'on rank 0: see its log'}); resume on {source}'s world size instead"
        )
    return target


def loader_state(state: dict[str, Any], world_size: int, batch_size: int) -> dict[str, Any]:
    """The loader position of ``state`` (batches per rank on its world size) on ``world_size`` ranks of
    ``batch_size``: the same samples of the epoch's global order consumed, none repeated or skipped."""
    if not state or state.get("world_size", world_size) == world_size:
        return state
    consumed = state["batches"] * state["batch_size"] * state["world_size"]
    return {**state, "batches": consumed // (batch_size * world_size), "world_size": world_size,
            "batch_size": batch_size}  # fmt: skip


def restore_group_settings(engine, folder: Path) -> None:
    """Undo DeepSpeed's ZeRO-3 universal load giving every parameter group the first group's settings
    (its weight decay on norms, biases and the encoding): each group gets back its own from the
    checkpoint's optimizer state (DeepSpeed 0.19.8, ``load_hp_checkpoint_state_from_checkpoint_dir_stage3``)."""
    path = Path(folder) / "zero" / "optimizer_state.pt"
    if engine.zero_optimization_stage() != 3 or not path.is_file():
        return
    saved = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]["param_groups"]
    groups = engine.optimizer.optimizer.param_groups
    if len(saved) != len(groups):
        raise CheckpointError(f"{path} holds {len(saved)} parameter groups, this model {len(groups)}")
    for group, settings in zip(groups, saved, strict=True):
        group.update({k: v for k, v in settings.items() if k != "params"})
