"""The training run as one object: ``Trainer(cfg)`` sets it up, ``train()`` runs it top to bottom.

Every rank runs this file; rank 0 alone prints, tracks and writes reports; every rank checkpoints
through DeepSpeed. The components it composes each own one job: the loaders (``data.py``), the
precision (``precision.py``), checkpoints and their interval (``checkpoint.py``), the log window
and progress bar (``metrics.py``), MLflow (``tracking.py``), the final export (``export.py``).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

import liere
from liere.engine import distributed, init_from, precision, quiet, reshard
from liere.engine.checkpoint import Checkpointer
from liere.engine.config import ConfigError, flatten
from liere.engine.data import build_data, dataset_inputs, eval_loader, model_spec
from liere.engine.distributed import log0
from liere.engine.ema import WeightEma, evaluate_ema
from liere.engine.evaluate import evaluate, size_name
from liere.engine.final import final_evaluation, write_outputs
from liere.engine.metrics import TrainMetrics
from liere.engine.optim import build_optimizer, build_scheduler
from liere.engine.regularizer import sparsity_problem, sparsity_steps
from liere.engine.tracking import Tracker, host_tags

EXIT_PREEMPTED = 3  # checkpointed on SIGTERM/SIGUSR1: restart the same command to resume


@dataclass
class Progress:
    """What a checkpoint must carry besides DeepSpeed's own state."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    loader: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    step_times: list[float] = field(default_factory=list)  # seconds per optimizer step, per log window


class StopSignal:
    """Records SIGTERM / SIGUSR1 (Slurm's preemption and time-limit warnings) for the loop to act on."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
    _fork_hook = False

    def __init__(self) -> None:
        self.received: int | None = None
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        if not StopSignal._fork_hook:
            # Slurm signals every process of a job step, loader workers included, and torch's workers
            # die of SIGTERM, which would fail the rank before it checkpoints: forked workers block both
            # signals (the rank acts on them; its workers end with it).
            os.register_at_fork(
                after_in_child=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, StopSignal.SIGNALS)
            )
            # ...which also makes them deaf to multiprocessing's SIGTERM at exit, whose join() would then
            # hold a failed rank forever (and its peers in their collectives): the rank kills them first.
            atexit.register(end_workers)
            StopSignal._fork_hook = True

    def _handle(self, signum, frame) -> None:
        self.received = signum

    @classmethod
    def ignore(cls) -> None:
        """After the checkpoint: a later signal (Slurm stopping the other ranks) must not kill the exit."""
        for sig in cls.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def end_workers(timeout_s: float = 5.0) -> None:
    """Kill the loader workers still alive (SIGKILL: they block SIGTERM) so the rank can exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise for each killed worker
    for child in multiprocessing.active_children():
        try:
            child.kill()
            child.join(timeout_s)
        except (OSError, RuntimeError):
            pass  # already gone


def deepspeed_config(cfg: DictConfig, world_size: int, device_type: str = "cpu") -> dict[str, Any]:
    """DeepSpeed's config of a run; ``train.precision`` is resolved (bf16, fp16 or fp32) by then.

    On GPUs, ZeRO overlaps the gradient reduction with the backward pass in contiguous buckets, and
    bf16 runs reduce and accumulate gradients in fp32 (bf16's 8 bits of mantissa would round LieRE's
    generator gradients across ranks); on CPUs (gloo) DeepSpeed's defaults stay."""
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": cfg.data.batch_size * t.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 12},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if device_type == "cuda" and t.zero_stage >= 1:
        zero.update(
            overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=int(5e8),
            allgather_bucket_size=int(5e8), reduce_scatter=True,
        )  # fmt: skip
    if device_type == "cuda" and t.precision == "bf16":
        config["communication_data_type"] = "fp32"
        if t.zero_stage >= 1:  # stage 0 takes only bf16 accumulation with bf16 weights (DeepSpeed's
            config["data_types"] = {"grad_accum_dtype": "fp32"}  # engine refuses the mix otherwise)
    return config


def binary_cross_entropy(logits: torch.Tensor, batch: dict, device) -> torch.Tensor:
    """DeiT III's loss (``--bce-loss``): BCE-with-logits, averaged over samples and classes, on the
    targets made binary, every class with a positive mixed weight a 1 (``engine.py:43-44``,
    ``targets.gt(0.0)``); one-hot labels when the loader does not mix."""
    if "target" in batch:
        target = batch["target"].to(device).gt(0.0).to(logits.dtype)
    else:
        target = F.one_hot(batch["label"].to(device), logits.shape[-1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target)


def build_criterion(cfg: DictConfig):
    """The loss, chosen once: ``optim.loss=bce`` (DeiT III), else soft targets when the loader mixes
    (its targets carry the label smoothing), else cross-entropy with ``optim.label_smoothing``."""
    if cfg.optim.loss == "bce":
        return binary_cross_entropy
    if cfg.data.mixup > 0 or cfg.data.cutmix > 0:
        return lambda logits, batch, device: F.cross_entropy(logits, batch["target"].to(device))
    smoothing = cfg.optim.label_smoothing
    return lambda logits, batch, device: F.cross_entropy(
        logits, batch["label"].to(device), label_smoothing=smoothing
    )


def run_description(cfg: DictConfig, info: dict[str, Any], world_size: int) -> str:
    """The run's one-line description in MLflow: model, encoding, data, world size, precision."""
    size = size_name(cfg.model.img_size)
    return (
        f"{cfg.model.name} with {cfg.model.encoding} on {cfg.data.dataset} at {size} "
        f"({info['splits'].get(cfg.data.train_split, '?')} training samples), {world_size} rank(s), "
        f"ZeRO-{cfg.train.zero_stage}, {cfg.train.precision}"
    )


class Trainer:
    """One training run. Construction is the setup; ``train()`` the run; the rest are its phases."""

    def __init__(self, cfg: DictConfig) -> None:
        quiet.filter_known_warnings()
        self.cfg = cfg
        denv = distributed.discover()
        self.precision = precision.resolve(cfg.train.precision, distributed.device_for(denv))
        cfg.train.precision = self.precision.name  # what DeepSpeed, the inputs and the params see
        log0(denv, f"precision {self.precision.name} ({self.precision.reason})")  # the run's first line
        self.denv, self.device = distributed.init(cfg.train.dist_timeout_s, denv)
        self.out_dir = Path(cfg.train.out_dir)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank

    def build(self) -> Trainer:
        """Data, model, DeepSpeed engine, checkpoint resume, tracking: everything before the first step."""
        import deepspeed

        cfg, denv = self.cfg, self.denv
        t = cfg.train
        self.checkpointer = Checkpointer(
            self.out_dir, denv.rank, t.keep_checkpoints, t.checkpoint_every, device=self.device
        )
        self.plan = self._plan_resume()  # before the data: another world size changes train.grad_accum
        model = self._build_data_and_model()
        if t.init_from and not self.plan.tag:  # a resumed run has its own weights
            for line in init_from.load_into(model, t.init_from, new_head=t.init_new_head):
                log0(denv, line)
        self.total_steps = t.epochs * self.steps_per_epoch
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        optimizer = build_optimizer(model, cfg.optim)
        warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        scheduler = build_scheduler(
            optimizer, cfg.optim, self.total_steps, warmup, steps_per_epoch=self.steps_per_epoch
        )
        ds_config = deepspeed_config(cfg, denv.world_size, self.device.type)
        if self.plan.universal:
            ds_config["checkpoint"] = {"load_universal": True}
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        torch.manual_seed(t.seed * 1000 + denv.rank)  # per-rank stochastic depth and dropout
        self.checkpointer.layout = {
            "world_size": denv.world_size, "zero_stage": t.zero_stage,
            "micro_batch": cfg.data.batch_size, "grad_accum": t.grad_accum,
        }  # fmt: skip
        self.ema = self.checkpointer.ema = WeightEma(self.engine, t.ema) if t.ema is not None else None
        self.progress = self._resume()
        self.tracker = self._start_tracking(model)
        self.metrics = TrainMetrics(
            cfg, denv, self.device, self.tracker, total_steps=self.total_steps, progress=self.progress
        )
        self.criterion = build_criterion(cfg)
        self.penalty, self.proximal = sparsity_steps(cfg, self.steps_per_epoch)
        self.stop = StopSignal()
        self.stop_vote = distributed.AnyRankLater()  # the ranks agree on a signal without a device sync
        return self

    def _build_data_and_model(self):
        """The loader and the model; what the config asks and the data or model cannot do is a
        ConfigError naming the config (launch/train.py prints it and exits 2, no traceback)."""
        cfg, m = self.cfg, self.cfg.model
        try:
            self.loader, self.info = build_data(cfg, self.denv)
            self.loader.set_device(self.device)  # uint8 to the device, normalized and mixed there
        except ValueError as err:
            raise ConfigError(f"{cfg.config_path}: data.dataset={cfg.data.dataset!r}: {err}") from None
        try:  # e.g. an img_size the patch does not divide, a block size the head dim does not
            self.spec = model_spec(cfg, self.info)
            model = liere.create_model(self.spec["name"], **self.spec["kwargs"])
        except ValueError as err:
            keys = {
                "model.name": m.name,
                "model.img_size": list(m.img_size),
                "model.patch_size": None if m.patch_size is None else list(m.patch_size),
                "model.encoding": m.encoding,
                "model.encoding_options": OmegaConf.to_container(m.encoding_options),
            }
            given = ", ".join(f"{k}={v!r}" for k, v in keys.items())
            raise ConfigError(f"{cfg.config_path}: the model cannot be built from {given}: {err}") from None
        problem = sparsity_problem(model, cfg)
        if problem:  # found now, not at the first sparsity step hundreds of steps in
            raise ConfigError(f"{cfg.config_path}: {problem}")
        self.steps_per_epoch = len(self.loader) // cfg.train.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{cfg.config_path}: data.batch_size={cfg.data.batch_size} x train.grad_accum="
                f"{cfg.train.grad_accum} x {self.denv.world_size} ranks exceeds the "
                f"{self.loader.num_samples_total} training samples: not one step per epoch"
            )
        return model

    def _plan_resume(self) -> reshard.ResumePlan:
        """Which checkpoint to resume and how; on another world size, the accumulation that keeps the
        checkpoint's global batch replaces ``train.grad_accum``."""
        tag = self.checkpointer.latest()
        meta = self.checkpointer.meta(tag) if tag else {}
        plan = reshard.plan(self.cfg, self.denv.world_size, self.checkpointer.dir, tag, meta)
        if plan.grad_accum is not None:
            self.cfg.train.grad_accum = plan.grad_accum
        return plan

    def _resume(self) -> Progress:
        tag, ckpt = self.plan.tag, self.checkpointer
        if not tag:
            return Progress()
        folder = None
        if self.plan.universal:
            folder = reshard.convert(
                ckpt.dir, tag, self.denv.rank, self.device, self.cfg.train.dist_timeout_s
            )
        progress = Progress(**ckpt.load(self.engine, tag, folder)["progress"])
        if folder is not None:
            reshard.restore_group_settings(self.engine, folder)  # (scanned by ckpt.load: safe to read)
        progress.loader = reshard.loader_state(
            progress.loader, self.denv.world_size, self.cfg.data.batch_size
        )
        log0(
            self.denv,
            f"resumed from {ckpt.dir / tag}: step {progress.step}, epoch {progress.epoch}"
            + self.plan.describe(self.denv.world_size),
        )
        return progress

    def _start_tracking(self, model) -> Tracker:
        """Rank 0's MLflow run (a no-op tracker elsewhere); a new run records params, tags and data."""
        cfg, denv, t = self.cfg, self.denv, self.cfg.tracking
        tracker = Tracker(
            denv.is_main and t.enabled, self.out_dir, uri=t.uri, experiment=t.experiment, run_name=t.run_name,
            run_id=self.progress.mlflow_run_id, system_metrics=t.system_metrics, parent_run_id=t.parent_run_id,
        )  # fmt: skip
        n_params = sum(p.numel() for p in model.parameters())
        if denv.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
            if self.progress.mlflow_run_id is None:  # a resumed run keeps the params it started with
                flops = liere.count_flops(model)["total"]
                tracker.log_params(flatten(cfg))
                tracker.log_params({
                    "train.precision_requested": self.precision.requested,
                    "train.precision_reason": self.precision.reason,
                    "model.parameters": n_params,
                    "model.gflops_per_sample": f"{flops / 1e9:.4f}",
                })  # fmt: skip
                tracker.set_tags({**host_tags(denv.world_size), "launcher": denv.launcher})
                tracker.set_description(run_description(cfg, self.info, denv.world_size))
                for dataset in dataset_inputs(cfg, self.info):
                    tracker.log_dataset(**dataset)
                tracker.log_artifact(self.out_dir / "config.yaml")
        self.progress.mlflow_run_id = tracker.run_id
        log0(
            denv,
            f"{self.spec['name']} ({cfg.model.encoding}): {n_params / 1e6:.2f} M params | {denv.world_size} "
            f"rank(s) on {self.device.type} | ZeRO-{cfg.train.zero_stage} {cfg.train.precision} | "
            f"{self.total_steps} steps ({self.steps_per_epoch}/epoch) | out {self.out_dir} | "
            f"MLflow run {tracker.run_id or '(offline)'}",
        )
        return tracker

    # -----------------------------------------------------------------------------------------
    # the run
    # -----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Epochs until the last step, then the final export; exits 3 after a signal's checkpoint."""
        try:
            try:
                while self.progress.step < self.total_steps:
                    outcome = self.train_epoch()
                    if outcome == "preempted":
                        self.preempted()
                    if outcome == "epoch_end":
                        self.end_of_epoch()
            finally:
                self.metrics.close()
            summary = self.finish()
            self.tracker.finish("FINISHED")
            distributed.leave_together()  # the others waited for rank 0's exports on the host, untimed
            return summary
        except BaseException as err:
            if not isinstance(err, SystemExit):
                self.tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise

    def train_epoch(self) -> str:
        """Micro steps until the epoch or the run ends; "epoch_end", "last_step" or "preempted"."""
        p, loader = self.progress, self.loader
        loader.set_epoch(p.epoch)
        if p.loader.get("epoch") == p.epoch:
            loader.load_state_dict(p.loader)  # resume inside this epoch
        self.engine.train()
        wait_start = time.perf_counter()
        for micro, batch in enumerate(loader, start=1):
            self.metrics.waited(time.perf_counter() - wait_start)
            self.train_step(batch)
            if micro % self.cfg.train.grad_accum == 0:  # an optimizer step happened
                outcome = self.after_optimizer_step()
                if outcome:
                    return outcome
            wait_start = time.perf_counter()
        return "epoch_end"

    def train_step(self, batch: dict[str, torch.Tensor]) -> None:
        """Forward, loss (plus the sparsity penalty), backward, DeepSpeed step (a micro step)."""
        x = batch["input"].to(self.device, dtype=self.precision.dtype, non_blocking=True)
        loss = self.criterion(self.engine(x).float(), batch, self.device)
        extra = self.penalty(self.engine.module, self.progress.step) if self.penalty else None
        self.engine.backward(loss if extra is None else loss + extra)
        self.engine.step()
        self.metrics.micro_step(loss, extra, x.shape[0])

    def after_optimizer_step(self) -> str | None:
        """Count the step, log, and checkpoint (on a signal: then stop); "last_step" at the end."""
        p = self.progress
        p.step += 1
        if self.proximal is not None:
            self.proximal(self.engine, p.step)
        if self.ema is not None:
            self.ema.update()
        p.loader = self.loader.state_dict()
        extra = {"train/sparsity_zero_groups": self.proximal.zero_groups} if self.proximal else None
        self.metrics.optimizer_step(
            p.step, p.epoch, self.engine, getattr(self.loader, "bad_samples", 0), extra
        )
        if self.stop_vote(self.stop.received is not None):  # (agreed one step after the signal)
            self.checkpointer.save(self.engine, p.step, self.client_state())
            return "preempted"
        self.checkpointer.after_step(self.engine, p.step, self.client_state())
        return "last_step" if p.step >= self.total_steps else None

    def end_of_epoch(self) -> None:
        """After a whole pass: the next epoch; validate and checkpoint if due (not after the last step)."""
        p = self.progress
        p.epoch += 1
        p.loader = self.loader.state_dict()
        if p.step < self.total_steps:
            every = self.cfg.train.eval_every
            if every and p.epoch % every == 0:
                self.validate()
            self.checkpointer.after_epoch(self.engine, p.step, self.client_state())

    def preempted(self) -> None:
        self.tracker.finish("KILLED")  # the restart reopens the same run
        log0(
            self.denv,
            f"checkpointed at step {self.progress.step} after signal {self.stop.received}; "
            "run the same command again to resume",
        )
        StopSignal.ignore()
        sys.exit(EXIT_PREEMPTED)

    def client_state(self) -> dict[str, Any]:
        return {"progress": vars(self.progress)}

    def validate(self) -> dict[str, float]:
        size = list(self.cfg.model.img_size)
        loader = eval_loader(self.cfg, self.denv, size)
        result = evaluate(self.engine, loader, self.device, self.precision.dtype)
        self.tracker.log_metrics(
            {
                f"val/top1 {size_name(size)}": result["top1"],
                f"val/top5 {size_name(size)}": result["top5"],
                "val/top1": result["top1"],
                "val/loss": result["loss"],
            },
            self.progress.step,
        )
        log0(
            self.denv,
            f"step {self.progress.step}: val top-1 {100 * result['top1']:.2f}% "
            f"top-5 {100 * result['top5']:.2f}% loss {result['loss']:.4f}",
        )
        if self.ema is not None:
            evaluate_ema(self)
        return result

    def finish(self) -> dict[str, Any]:
        """The final checkpoint, the evaluation sweep, the exported weights, reports and summary."""
        p = self.progress
        tag = self.checkpointer.latest()
        if self.checkpointer.latest_step() != p.step:
            tag = self.checkpointer.save(self.engine, p.step, self.client_state())
        summary: dict[str, Any] = {
            "step": p.step,
            "out_dir": str(self.out_dir),
            "mlflow_run_id": self.tracker.run_id,
            "step_time_s": self.metrics.step_time(),
            **final_evaluation(self),
        }
        if summary["step_time_s"] is not None:
            self.tracker.log_metrics({"train/step_time_s": summary["step_time_s"]}, p.step)
        self.stop_vote.drain()  # the collectives end here: rank 0's exports below are its own
        if self.denv.is_main:
            summary.update(write_outputs(self, tag, summary))
        return summary


def _dry_run(cfg: DictConfig, denv) -> dict[str, Any]:
    """Build the model and, when the data is prepared, the first batch; print what a run would be.

    Data that is not prepared yet is reported, not fatal: a recipe can be checked before its data
    exists, as long as it names its classes and channels (model.num_classes, model.in_chans).
    """
    from pipelines.errors import DataError

    m = cfg.model
    try:
        loader, info = build_data(cfg, denv)
    except DataError as err:
        if m.num_classes is None or m.in_chans is None:
            raise ValueError(
                f"{err}\n(a dry run without prepared data needs model.num_classes and model.in_chans)"
            ) from None
        loader, info = (
            None,
            {"channels": m.in_chans, "num_classes": m.num_classes, "spatial_rank": len(m.img_size)},
        )
        data_line = f"data {cfg.data.dataset}: not prepared yet ({err})"
    spec = model_spec(cfg, info)
    model = liere.create_model(spec["name"], **spec["kwargs"])
    n_params = sum(p.numel() for p in model.parameters())
    flops = liere.count_flops(model)["total"]
    if loader is not None:
        batch = next(iter(loader))
        data_line = (
            f"data {cfg.data.dataset}/{cfg.data.train_split} via {cfg.data.backend}: {loader.num_samples_total} "
            f"samples, first batch input {tuple(batch['input'].shape)} {batch['input'].dtype}, "
            f"label {tuple(batch['label'].shape)}"
        )
    log0(
        denv,
        f"config {cfg.config_path}: OK\nmodel {spec['name']} ({m.encoding}): "
        f"{n_params / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOPs per sample (forward)\n{data_line}",
    )
    return {"params": n_params, "flops": flops, "data_ready": loader is not None}


def run(cfg: DictConfig, dry_run: bool = False) -> dict[str, Any]:
    """Train (or, with ``dry_run``, only validate and build) the run described by ``cfg``."""
    trainer = Trainer(cfg)
    if dry_run:
        return _dry_run(cfg, trainer.denv)
    return trainer.build().train()
