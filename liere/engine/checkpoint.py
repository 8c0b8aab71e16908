"""Checkpoints through DeepSpeed: every rank saves its shard; the ``latest`` pointer moves last.

Layout: ``<out_dir>/checkpoints/step_000123/`` (DeepSpeed's files, plus ``rng_rank{r}.pt`` and
``COMPLETE``) and ``<out_dir>/checkpoints/latest`` holding the newest complete tag. A save
interrupted by a crash or a full disk leaves the previous pointer in place, so a restart resumes
from the last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

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


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the folder or file."""


# What the pickles of a checkpoint may name besides tensors and containers: DeepSpeed's optimizer
# records and NumPy's RNG state. DeepSpeed itself loads with weights_only=False (its checkpoint engine
# and zero_to_fp32 hard-code it), so every file is scanned first and one naming anything else is
# refused before any of it is unpickled: a checkpoint folder from elsewhere cannot run code.
SAFE_GLOBALS = {
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
}


def unsafe_globals(path: Path) -> list[str]:
    """The globals a pickle in ``path`` would import that are neither torch's weights-only set nor
    ``SAFE_GLOBALS`` (read from its opcodes, nothing unpickled)."""
    found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    return [g for g in found if g not in SAFE_GLOBALS and not g.startswith("numpy.dtypes.")]


def check_pickles(folder: Path) -> str | None:
    """None when every ``*.pt`` of ``folder`` is safe to load, else which file names what."""
    for path in sorted(Path(folder).rglob("*.pt")):
        try:
            bad = unsafe_globals(path)
        except Exception as err:  # not a readable pickle at all
            return f"{path} cannot be read ({type(err).__name__}: {err})"
        if bad:
            return f"{path} would import {', '.join(bad)} when loaded (refused: it could run code)"
    return None


def _load_rng(path: Path) -> dict[str, Any]:
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class Checkpointer:
    """Saves every ``every`` optimizer steps, or at each epoch end when ``every`` is 0."""

    def __init__(
        self,
        out_dir: Path,
        rank: int,
        keep: int,
        every: int = 0,
        *,
        device: torch.device | None = None,
        layout: dict[str, int] | None = None,
    ) -> None:
        self.dir = Path(out_dir) / "checkpoints"
        self.rank, self.keep, self.every = rank, max(1, keep), every
        self.device = device or torch.device("cpu")  # where the ranks' collectives run
        # world_size, zero_stage, micro_batch, grad_accum: recorded in COMPLETE for a resume elsewhere
        self.layout = dict(layout or {})
        self._verified: set[str] = set()  # tags whose files were checked against COMPLETE
        self.ema = None  # the run's weight average (liere/engine/ema.py), saved and loaded with each tag

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
        """Tag of the newest complete, undamaged checkpoint, or None when there is none yet.

        ``latest`` names the newest; if a file of it is missing, of the wrong size or checksum, the
        previous complete one is taken instead, with a warning naming the bad file. Rank 0 reads and
        checks the files, the other ranks take its answer (one read of a shared file system, not N)."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return self._find_latest()
        answer: list[Any] = [None]
        if self.rank == 0:
            try:
                answer[0] = ("tag", self._find_latest())
            except CheckpointError as err:
                answer[0] = ("error", str(err))
        dist.broadcast_object_list(answer, src=0)
        kind, value = answer[0]
        if kind == "error":
            raise CheckpointError(value)
        if value is not None:
            self._verified.add(value)
        return value

    def _find_latest(self) -> str | None:
        pointer = self.dir / "latest"
        if not pointer.is_file():
            return None
        named = pointer.read_text().strip()
        candidates = [named] + [t for t in self._complete_tags()[::-1] if t < named]
        damaged = []
        for tag in candidates:
            problem = self._verify(tag)
            if problem is None:
                if damaged and self.rank == 0:
                    print(f"[checkpoint] warning: {'; '.join(damaged)}; resuming from {tag}", file=sys.stderr)
                return tag
            damaged.append(problem)
        raise CheckpointError(
            f"no usable checkpoint in {self.dir}: {'; '.join(damaged)} (remove the folder to start over)"
        )

    def meta(self, tag: str) -> dict[str, Any]:
        """The ``COMPLETE`` record of ``tag``: step, files and the layout that wrote it."""
        return json.loads((self.dir / tag / "COMPLETE").read_text())

    def _complete_tags(self) -> list[str]:
        return sorted(p.name for p in self.dir.glob("step_*") if (p / "COMPLETE").is_file())

    def _verify(self, tag: str) -> str | None:
        """None if every file ``COMPLETE`` lists has its recorded size and checksum, else what is wrong."""
        if tag in self._verified:
            return None
        marker = self.dir / tag / "COMPLETE"
        if not marker.is_file():
            return f"{self.dir / tag} is not a complete checkpoint (no COMPLETE)"
        files = json.loads(marker.read_text()).get("files", {})  # older checkpoints list none
        for name, want in files.items():
            path = self.dir / tag / name
            if not path.is_file():
                return f"{path} is missing"
            if path.stat().st_size != want["size"]:
                return f"{path} has {path.stat().st_size} bytes, {want['size']} were written"
            if _sha256(path) != want["sha256"]:
                return f"{path} does not match its checksum"
        unsafe = check_pickles(self.dir / tag)
        if unsafe:
            return unsafe
        self._verified.add(tag)
        return None

    def save(self, engine, step: int, client_state: dict[str, Any]) -> str:
        """Every rank saves its part; after a barrier rank 0 records every file's size and checksum in
        ``COMPLETE`` and moves ``latest``. A save that fails says why and removes its partial folder."""
        tag = step_tag(step)
        self._check_space(tag)
        try:
            engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
            torch.save(rng_state(), self.dir / tag / f"rng_rank{self.rank}.pt")
            if self.ema is not None:
                self.ema.save(self.dir / tag)  # a collective: every rank saves
        except Exception as err:  # a full disk shows up as OSError or as torch's RuntimeError
            shutil.rmtree(self.dir / tag, ignore_errors=True)
            raise CheckpointError(
                f"checkpoint {self.dir / tag} could not be written ({type(err).__name__}: {err}); "
                f"{self._space_words()}; its partial folder was removed; {self._in_force()}"
            ) from err
        distributed.barrier()
        if self.rank == 0:
            files = {
                str(f.relative_to(self.dir / tag)): {"size": f.stat().st_size, "sha256": _sha256(f)}
                for f in sorted((self.dir / tag).rglob("*"))
                if f.is_file()
            }
            record = {"step": step, **self.layout, "files": files}
            _atomic_write(self.dir / tag / "COMPLETE", json.dumps(record))
            _atomic_write(self.dir / "latest", tag)
            self._verified.add(tag)
            self._prune(tag)
        distributed.barrier()
        return tag

    def _check_space(self, tag: str) -> None:
        """Refuse, before writing, a save that the last one's size says will not fit (ranks agree)."""
        previous = self._complete_tags()
        need = self._bytes(previous[-1]) if previous else 0
        self.dir.mkdir(parents=True, exist_ok=True)
        short = shutil.disk_usage(self.dir).free < need
        if distributed.any_rank(short, self.device):
            raise CheckpointError(
                f"checkpoint {self.dir / tag} not written: the last one took {_gib(need)}, "
                f"{self._space_words()}; {self._in_force()}"
            )

    def _bytes(self, tag: str) -> int:
        """The size of checkpoint ``tag`` as its ``COMPLETE`` recorded it (else as found on disk)."""
        files = self.meta(tag).get("files")
        return sum(f["size"] for f in files.values()) if files else _folder_bytes(self.dir / tag)

    def _space_words(self) -> str:
        free = shutil.disk_usage(self.dir).free if self.dir.exists() else 0
        return f"{_gib(free)} free on {self.dir}"

    def _in_force(self) -> str:
        tags = self._complete_tags()
        if not tags:
            return "there is no earlier checkpoint: a restart begins from step 0"
        return f"{self.dir / tags[-1]} stays the one a restart resumes from"

    def _prune(self, newest: str) -> None:
        for old in self._complete_tags()[: -self.keep]:
            if old != newest:
                shutil.rmtree(self.dir / old, ignore_errors=True)
                shutil.rmtree(self.dir / "universal" / old, ignore_errors=True)

    def load(self, engine, tag: str, folder: Path | None = None) -> dict[str, Any]:
        """Restore model, optimizer, schedule and this rank's RNG; returns the client state.

        ``folder``: where DeepSpeed reads the tag's state from (its universal form on another world
        size; a rank the checkpoint did not have keeps its fresh RNG)."""
        folder = Path(folder) if folder is not None else self.dir / tag
        unsafe = check_pickles(folder)
        if unsafe:
            raise CheckpointError(unsafe)
        _, client_state = engine.load_checkpoint(
            str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if client_state is None:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {folder}")
        if self.ema is not None:
            self.ema.load(self.dir / tag)
        rng_file = self.dir / tag / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(_load_rng(rng_file))
        return client_state


def consolidated_state_dict(checkpoint_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of a DeepSpeed checkpoint, whatever its ZeRO stage and precision (one process)."""
    files = sorted((Path(checkpoint_dir) / tag).glob("*mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{Path(checkpoint_dir) / tag}: no DeepSpeed model states")
    unsafe = check_pickles(Path(checkpoint_dir) / tag)
    if unsafe:
        raise CheckpointError(unsafe)
    states = torch.load(files[0], map_location="cpu", weights_only=True)
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


def latest_of_run(run_dir: Path) -> tuple[Path, str, dict[str, Any]] | None:
    """(checkpoint folder, tag, model spec) of a run's newest complete checkpoint, found by this process
    alone (no collective), the spec built from the run's config.yaml; None without either."""
    from omegaconf import OmegaConf

    import pipelines
    from liere.engine.data import model_spec

    checkpointer = Checkpointer(run_dir, rank=0, keep=10**6)
    tag = checkpointer._find_latest()
    config = run_dir / "config.yaml"
    if tag is None or not config.is_file():
        return None
    cfg = OmegaConf.load(config)
    return checkpointer.dir, tag, model_spec(cfg, pipelines.dataset_info(cfg.data.root, cfg.data.dataset))
