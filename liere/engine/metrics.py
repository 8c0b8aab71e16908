"""The training log: a window of micro steps averaged over ranks, logged to MLflow, shown on the
progress bar and written to ``status.json`` (the latest) and ``history.jsonl`` (every window, one
JSON line each) in the run folder by rank 0, every ``train.log_every`` optimizer steps. The history
keeps a run's curves beside its weights, whatever became of its MLflow store."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

HISTORY = "history.jsonl"  # in the run folder: one line per log window, {"step", "epoch", metric: value}


@dataclass
class Window:
    """What the micro steps since the last log add up to."""

    loss: torch.Tensor | float = 0.0  # summed on the device
    penalty: torch.Tensor | float = 0.0
    micro_steps: int = 0
    samples: int = 0  # over all ranks
    data_wait: float = 0.0  # seconds spent waiting for the loader
    start: float = 0.0


class TrainMetrics:
    """Owns the log window, the progress bar and the status file; every rank calls it, rank 0 shows."""

    def __init__(self, cfg, denv, device: torch.device, tracker, *, total_steps: int, progress) -> None:
        self.cfg, self.denv, self.device, self.tracker = cfg, denv, device, tracker
        self.total_steps = total_steps
        self.step_times: list[float] = (
            progress.step_times
        )  # seconds per optimizer step per window (checkpointed)
        self.window = Window(start=time.perf_counter())
        self.history = Path(cfg.train.out_dir) / HISTORY
        self.bar = None
        if denv.is_main:
            keep_history_until(self.history, progress.step)  # a resumed run logs its later steps again
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, initial=progress.step, desc="train", unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0,
            )  # fmt: skip

    def waited(self, seconds: float) -> None:
        self.window.data_wait += seconds

    def micro_step(self, loss: torch.Tensor, penalty: torch.Tensor | None, samples: int) -> None:
        """Add a micro step to the window: on the device (no host sync per step; read at the log)."""
        w = self.window
        w.loss = w.loss + loss.detach().double()
        w.penalty = w.penalty + (0.0 if penalty is None else penalty.detach().double())
        w.micro_steps += 1
        w.samples += samples * self.denv.world_size

    def optimizer_step(
        self, step: int, epoch: int, engine, bad_samples: int = 0, extra: dict | None = None
    ) -> None:
        """Advance the bar; at the log interval (and the last step) log the window and start a new one.
        ``bad_samples``: the samples this rank's loader replaced so far (``data.bad_samples: skip``);
        ``extra``: metrics of this step alone, logged as they are."""
        if self.bar is not None:
            self.bar.update(1)
        if step % self.cfg.train.log_every == 0 or step == self.total_steps:
            self._log(step, epoch, engine, bad_samples, extra or {})

    def _log(self, step: int, epoch: int, engine, bad_samples: int, extra: dict) -> None:
        w = self.window
        loss = torch.stack([
            torch.as_tensor(w.loss, dtype=torch.float64, device=self.device).reshape(()),
            torch.tensor(float(w.micro_steps), dtype=torch.float64, device=self.device),
            torch.tensor(float(bad_samples), dtype=torch.float64, device=self.device),
        ])  # fmt: skip
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(loss)
        elapsed = max(time.perf_counter() - w.start, 1e-9)
        self.step_times.append(elapsed * self.cfg.train.grad_accum / max(1, w.micro_steps))
        metrics = {
            "train/loss": loss[0].item() / max(1.0, loss[1].item()),
            "train/lr": engine.get_lr()[0],
            "train/images_per_s": w.samples / elapsed,
            "train/data_wait_fraction": w.data_wait / elapsed,
            "train/epoch": epoch,
            "data/bad_samples": loss[2].item(),  # replaced so far, all ranks
        }
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            metrics["train/grad_norm"] = float(grad_norm)
        if self.cfg.sparsity.weight and self.cfg.sparsity.method == "penalty":
            metrics["train/sparsity_penalty"] = float(w.penalty) / max(1, w.micro_steps)
        metrics.update({k: float(v) for k, v in extra.items()})  # (tensors read here, at log steps only)
        self.tracker.log_metrics(metrics, step)
        if self.denv.is_main:
            self.bar.set_postfix(
                loss=f"{metrics['train/loss']:.4f}", lr=f"{metrics['train/lr']:.2e}",
                img_s=f"{metrics['train/images_per_s']:.0f}", refresh=False,
            )  # fmt: skip
            status = json.dumps({"step": step, "epoch": epoch, **metrics})
            (Path(self.cfg.train.out_dir) / "status.json").write_text(status)
            with open(self.history, "a") as f:
                f.write(status + "\n")
        self.window = Window(start=time.perf_counter())

    def step_time(self) -> float | None:
        """Median seconds per optimizer step over the log windows, the first (warm-up) left out."""
        return median_step_time(self.step_times)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def median_step_time(times: list[float]) -> float | None:
    steady = sorted(times[1:] or times)
    return steady[len(steady) // 2] if steady else None


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``history.jsonl``, in step order; a line cut short by a kill is left out."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return sorted(records, key=lambda r: r["step"])


def keep_history_until(path: Path, step: int) -> None:
    """Drop the records after ``step`` (what a stopped run logged past its last checkpoint)."""
    if path.is_file():
        kept = [json.dumps(r) + "\n" for r in read_history(path) if r["step"] <= step]
        path.write_text("".join(kept))
