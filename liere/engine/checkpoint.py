"""Checkpoints through DeepSpeed: every rank saves its shard; the ``latest`` pointer moves last.

Layout: ``<out_dir>/checkpoints/step_000123/`` (DeepSpeed's files, plus ``rng_rank{r}.pt`` and
``COMPLETE``) and ``<out_dir>/checkpoints/latest`` holding the newest complete tag. A save
interrupted by a crash or a full disk leaves the previous pointer in place, so a restart resumes
from the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liere.engine import distributed


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def step_tag(step: int) -> str:
    return f"step_{step:09d}"


def tag_step(tag: str) -> int:
    return int(tag.split("_")[1])


class Checkpointer:
    """Saves every ``every`` optimizer steps, or at each epoch end when ``every`` is 0."""

    def __init__(self, out_dir: Path, rank: int, keep: int, every: int = 0) -> None:
        self.dir = Path(out_dir) / "checkpoints"
        self.rank, self.keep, self.every = rank, max(1, keep), every

    def after_step(self, engine, step: int, client_state: dict[str, Any]) -> None:
        if self.every and step % self.every == 0:
            self.save(engine, step, client_state)

    def after_epoch(self, engine, step: int, client_state: dict[str, Any]) -> None:
        if not self.every:
            self.save(engine, step, client_state)

    def latest_step(self) -> int | None:
        tag = self.latest()
        return None if tag is None else tag_step(tag)

    def latest(self) -> str | None:
        """Tag of the newest complete checkpoint, or None."""
        pointer = self.dir / "latest"
        if not pointer.is_file():
            return None
        tag = pointer.read_text().strip()
        if not (self.dir / tag / "COMPLETE").is_file():
            raise RuntimeError(f"{pointer} names {tag!r}, which is not a complete checkpoint in {self.dir}")
        return tag

    def save(self, engine, step: int, client_state: dict[str, Any]) -> str:
        """Every rank saves its part; after a barrier rank 0 marks it complete and moves ``latest``."""
        tag = step_tag(step)
        try:
            engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
            torch.save(rng_state(), self.dir / tag / f"rng_rank{self.rank}.pt")
        except OSError as err:
            raise RuntimeError(
                f"checkpoint {self.dir / tag} could not be written ({err}); the previous checkpoint "
                f"({self.latest() or 'none'}) is intact and remains the one a restart resumes from"
            ) from err
        distributed.barrier()
        if self.rank == 0:
            _atomic_write(self.dir / tag / "COMPLETE", json.dumps({"step": step}))
            _atomic_write(self.dir / "latest", tag)
            self._prune(tag)
        distributed.barrier()
        return tag

    def _prune(self, newest: str) -> None:
        tags = sorted(p.name for p in self.dir.glob("step_*") if (p / "COMPLETE").is_file())
        for old in tags[: -self.keep]:
            if old != newest:
                shutil.rmtree(self.dir / old, ignore_errors=True)

    def load(self, engine, tag: str) -> dict[str, Any]:
        """Restore model, optimizer, schedule and this rank's RNG; returns the client state."""
        _, client_state = engine.load_checkpoint(
            str(self.dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if client_state is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.dir / tag}")
        rng_file = self.dir / tag / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return client_state


def consolidated_state_dict(checkpoint_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of a DeepSpeed checkpoint, whatever its ZeRO stage and precision (one process)."""
    files = sorted((Path(checkpoint_dir) / tag).glob("*mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{Path(checkpoint_dir) / tag}: no DeepSpeed model states")
    states = torch.load(files[0], map_location="cpu", weights_only=False)
    if states.get("param_shapes") is not None:  # ZeRO 1-3: fp32 partitions in the optimizer shards
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    else:  # stage 0: the module itself, with bf16/fp16 master weights kept by the optimizer wrapper
        state = dict(states["module"])
        optimizer = states.get("optimizer") or {}
        if "fp32_groups" in optimizer:
            for group, weights in zip(
                optimizer["optimizer_state_dict"]["param_groups"], optimizer["fp32_groups"]
            ):
                state.update(zip(group["liere_param_names"], weights, strict=True))
    return {k: v.float().contiguous() for k, v in state.items()}


def export_checkpoint(checkpoint_dir: Path, tag: str, spec: dict[str, Any], path: Path) -> Path:
    """The consolidated fp32 weights of checkpoint ``tag`` as ``path`` (model.safetensors), with the
    model's name and constructor arguments, so ``liere.load_model(path)`` rebuilds it without DeepSpeed."""
    import liere

    state = consolidated_state_dict(checkpoint_dir, tag)
    liere.models.save_pretrained(state, path, spec["name"], spec["kwargs"])
    return path
