"""The training run, top to bottom: setup, resume, steps, evaluation, checkpoints, export.

One function per phase; ``run`` calls them in the order they happen. Every rank runs this file;
rank 0 alone prints, tracks and writes reports; every rank checkpoints through DeepSpeed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

import liere
from liere.engine import distributed, quiet
from liere.engine.checkpoint import Checkpointer, consolidated_state_dict
from liere.engine.config import flatten
from liere.engine.evaluate import evaluate, resolution_sweep, shuffle_patches, write_sweep_report
from liere.engine.optim import build_optimizer, build_scheduler
from liere.engine.regularizer import SparsityPenalty, reportable, write_report
from liere.engine.tracking import Tracker, host_tags

EXIT_PREEMPTED = 3  # checkpointed on SIGTERM/SIGUSR1: restart the same command to resume
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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
            StopSignal._fork_hook = True

    def _handle(self, signum, frame) -> None:
        self.received = signum


def log0(denv, *msg: Any) -> None:
    if denv.is_main:
        print(*msg, flush=True)


# ---------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------
def build_data(cfg: DictConfig, denv) -> tuple[Any, dict[str, Any]]:
    """The train loader; an embedded data set is prepared on first use (rank 0 writes, the others
    wait for its manifests), a real one must have been prepared with launch/prepare_data.py."""
    import pipelines
    from pipelines.sources import list_sources, source_class

    d = cfg.data
    embedded = d.dataset in list_sources() and not source_class(d.dataset).needs_src
    if embedded:
        info = pipelines.ensure_prepared(
            d.dataset, d.root, formats=[_format(d.backend)], rank=denv.rank, world_size=denv.world_size
        )
    else:
        info = pipelines.dataset_info(d.root, d.dataset)
    loader = pipelines.build_loader(
        d.backend,
        root=d.root,
        dataset=d.dataset,
        split=d.train_split,
        batch_size=d.batch_size,
        train=True,
        image_size=list(cfg.model.img_size),
        rank=denv.rank,
        world_size=denv.world_size,
        seed=cfg.train.seed,
        num_workers=d.workers,
        mixup_alpha=d.mixup,
        cutmix_alpha=d.cutmix,
        label_smoothing=cfg.optim.label_smoothing,
        scale=tuple(d.crop_scale),
        randaugment=list(d.randaugment) if d.randaugment else None,
        flip=d.flip,
    )
    return loader, info


def _format(backend: str) -> str:
    return "ffcv" if backend == "ffcv" else "webdataset"  # DALI reads the webdataset shards


def eval_loader(cfg: DictConfig, denv, size: list[int]):
    import pipelines

    d = cfg.data
    return pipelines.build_loader(
        d.backend,
        root=d.root,
        dataset=d.dataset,
        split=d.val_split,
        batch_size=d.eval_batch_size or d.batch_size,
        train=False,
        image_size=list(size),
        rank=denv.rank,
        world_size=denv.world_size,
        seed=cfg.train.seed,
        num_workers=d.workers,
        crop_ratio=d.eval_crop_ratio,
    )


def model_spec(cfg: DictConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the model: the config, with the data set filling the blanks."""
    m = cfg.model
    kwargs = {
        "encoding": m.encoding,
        "encoding_options": OmegaConf.to_container(m.encoding_options),
        "img_size": list(m.img_size),
        "in_chans": m.in_chans or int(info["channels"]),
        "num_classes": m.num_classes or int(info["num_classes"]),
        "global_pool": m.global_pool,
        "drop_path_rate": m.drop_path_rate,
        "drop_rate": m.drop_rate,
        "attn_drop_rate": m.attn_drop_rate,
        "grad_checkpointing": m.grad_checkpointing,
    }
    if m.patch_size is not None:
        kwargs["patch_size"] = list(m.patch_size)
    if int(info["spatial_rank"]) != len(m.img_size):
        raise ValueError(
            f"model.img_size={list(m.img_size)} has {len(m.img_size)} axes but data set {cfg.data.dataset!r} "
            f"is {info['spatial_rank']}-D"
        )
    return {"name": m.name, "kwargs": kwargs}


def deepspeed_config(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": cfg.data.batch_size * t.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 12},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def run(cfg: DictConfig, dry_run: bool = False) -> dict[str, Any]:
    """Train (or, with ``dry_run``, only validate and build) the run described by ``cfg``."""
    quiet.filter_known_warnings()
    denv, device = distributed.init(cfg.train.dist_timeout_s)
    import deepspeed

    out_dir = Path(cfg.train.out_dir)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    if dry_run:
        return _dry_run(cfg, denv)
    loader, info = build_data(cfg, denv)
    spec = model_spec(cfg, info)
    model = liere.create_model(spec["name"], **spec["kwargs"])
    n_params = sum(p.numel() for p in model.parameters())
    flops = liere.count_flops(model)["total"]

    steps_per_epoch = len(loader) // cfg.train.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} x train.grad_accum={cfg.train.grad_accum} x {denv.world_size} "
            f"ranks exceeds the {loader.num_samples_total} training samples: not one step per epoch"
        )
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps, warmup)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, denv.world_size),
    )
    torch.manual_seed(cfg.train.seed * 1000 + denv.rank)  # per-rank stochastic depth and dropout

    checkpointer = Checkpointer(out_dir, denv.rank, cfg.train.keep_checkpoints)
    progress = Progress()
    tag = checkpointer.latest()
    if tag:
        progress = Progress(**checkpointer.load(engine, tag)["progress"])
        log0(denv, f"resumed from {checkpointer.dir / tag}: step {progress.step}, epoch {progress.epoch}")
    t = cfg.tracking  # inactive (every call a no-op) on ranks other than 0 and when disabled
    tracker = Tracker(
        denv.is_main and t.enabled,
        out_dir,
        t.uri,
        t.experiment,
        t.run_name,
        progress.mlflow_run_id,
        t.system_metrics,
        t.parent_run_id,
    )
    if denv.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        if progress.mlflow_run_id is None:  # a resumed run keeps the params it started with
            tracker.log_params(flatten(cfg))
            tracker.set_tags({**host_tags(denv.world_size), "launcher": denv.launcher})
            tracker.log_artifact(out_dir / "config.yaml")
            tracker.log_params(
                {"model.parameters": n_params, "model.gflops_per_sample": f"{flops / 1e9:.4f}"}
            )
    progress.mlflow_run_id = tracker.run_id
    log0(
        denv,
        f"{spec['name']} ({cfg.model.encoding}): {n_params / 1e6:.2f} M params | {denv.world_size} "
        f"rank(s) on {device.type} | ZeRO-{cfg.train.zero_stage} {cfg.train.precision} | "
        f"{total_steps} steps ({steps_per_epoch}/epoch) | out {out_dir} | MLflow run {tracker.run_id}",
    )

    stop = StopSignal()
    try:
        result = train_loop(
            cfg, denv, device, engine, loader, checkpointer, tracker, progress, total_steps, stop
        )
        if result == "preempted":
            tracker.finish("KILLED")  # the restart reopens the same run
            log0(
                denv,
                f"checkpointed at step {progress.step} after signal {stop.received}; "
                f"run the same command again to resume",
            )
            for sig in StopSignal.SIGNALS:  # checkpointed: a later signal (Slurm stopping the other
                signal.signal(sig, signal.SIG_IGN)  # ranks) must not kill the exit, which resets handlers
            sys.exit(EXIT_PREEMPTED)
        summary = finish(cfg, denv, engine, spec, checkpointer, tracker, progress, out_dir)
        tracker.finish("FINISHED")
        return summary
    except BaseException as err:
        if not isinstance(err, SystemExit):
            tracker.finish("FAILED")
        raise


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
        loader, info = None, {"channels": m.in_chans, "num_classes": m.num_classes, "spatial_rank": len(m.img_size)}
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


def train_loop(cfg, denv, device, engine, loader, checkpointer, tracker, progress, total_steps, stop) -> str:
    """Epochs until ``total_steps`` optimizer steps; returns "done" or "preempted" (checkpoint written)."""
    bar = _progress_bar(denv, total_steps, progress.step)
    try:
        while progress.step < total_steps:
            loader.set_epoch(progress.epoch)
            if progress.loader.get("epoch") == progress.epoch:
                loader.load_state_dict(progress.loader)  # resume inside this epoch
            outcome = train_epoch(
                cfg, denv, device, engine, loader, checkpointer, tracker, progress, total_steps, stop, bar
            )
            if outcome == "preempted":
                return outcome
            if outcome == "epoch_end":
                progress.epoch += 1
                progress.loader = loader.state_dict()
                if progress.step < total_steps:
                    if cfg.train.eval_every and progress.epoch % cfg.train.eval_every == 0:
                        validate(cfg, denv, device, engine, tracker, progress.step)
                    if not cfg.train.checkpoint_every:
                        checkpointer.save(engine, progress.step, {"progress": vars(progress)})
        return "done"
    finally:
        if bar is not None:
            bar.close()


def train_epoch(
    cfg, denv, device, engine, loader, checkpointer, tracker, progress, total_steps, stop, bar
) -> str:
    """One pass over the loader; returns "epoch_end", "max_steps" or "preempted"."""
    dtype = DTYPES[cfg.train.precision]
    window = {"loss": 0.0, "n": 0, "wait": 0.0, "t0": time.perf_counter(), "samples": 0, "penalty": 0.0}
    penalty = SparsityPenalty(cfg, len(loader) // cfg.train.grad_accum) if cfg.sparsity.weight else None
    engine.train()
    t_wait = time.perf_counter()
    for micro, batch in enumerate(loader, start=1):
        window["wait"] += time.perf_counter() - t_wait
        x = batch["input"].to(device, dtype=dtype, non_blocking=True)
        if "target" in batch:  # mixup / cutmix / label smoothing made soft targets
            loss = F.cross_entropy(engine(x).float(), batch["target"].to(device))
        else:
            loss = F.cross_entropy(
                engine(x).float(), batch["label"].to(device), label_smoothing=cfg.optim.label_smoothing
            )
        extra = penalty(engine.module, progress.step) if penalty else None
        engine.backward(loss if extra is None else loss + extra)
        engine.step()
        window["loss"] += loss.item()
        window["penalty"] += 0.0 if extra is None else extra.item()
        window["n"] += 1
        window["samples"] += x.shape[0] * denv.world_size
        if micro % cfg.train.grad_accum == 0:  # an optimizer step happened
            progress.step += 1
            progress.loader = loader.state_dict()
            if bar is not None:
                bar.update(1)
            if progress.step % cfg.train.log_every == 0 or progress.step == total_steps:
                _log_window(cfg, denv, device, engine, tracker, progress, window, bar)
            if distributed.any_rank(stop.received is not None, device):
                checkpointer.save(engine, progress.step, {"progress": vars(progress)})
                return "preempted"
            if cfg.train.checkpoint_every and progress.step % cfg.train.checkpoint_every == 0:
                checkpointer.save(engine, progress.step, {"progress": vars(progress)})
            if progress.step >= total_steps:
                return "max_steps"
        t_wait = time.perf_counter()
    return "epoch_end"


def _progress_bar(denv, total: int, initial: int):
    if not denv.is_main:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )


def _log_window(cfg, denv, device, engine, tracker, progress, window, bar) -> None:
    """Average the window's loss over ranks and log it with lr, grad norm, throughput, data wait."""
    loss = torch.tensor([window["loss"], window["n"]], device=device, dtype=torch.float64)
    if world_size() > 1:
        dist.all_reduce(loss)
    elapsed = time.perf_counter() - window["t0"]
    progress.step_times.append(elapsed * cfg.train.grad_accum / max(1, window["n"]))
    grad_norm = engine.get_global_grad_norm()
    metrics = {
        "train/loss": loss[0].item() / max(1.0, loss[1].item()),
        "train/lr": engine.get_lr()[0],
        "train/images_per_s": window["samples"] / max(elapsed, 1e-9),
        "train/data_wait_fraction": window["wait"] / max(elapsed, 1e-9),
        "train/epoch": progress.epoch,
    }
    if grad_norm is not None and math.isfinite(float(grad_norm)):
        metrics["train/grad_norm"] = float(grad_norm)
    if cfg.sparsity.weight:
        metrics["train/sparsity_penalty"] = window["penalty"] / max(1, window["n"])
    tracker.log_metrics(metrics, progress.step)
    if bar is not None:
        bar.set_postfix(
            loss=f"{metrics['train/loss']:.4f}",
            lr=f"{metrics['train/lr']:.2e}",
            img_s=f"{metrics['train/images_per_s']:.0f}",
            refresh=False,
        )
    if denv.is_main:
        status = {"step": progress.step, "epoch": progress.epoch, **metrics}
        (Path(cfg.train.out_dir) / "status.json").write_text(json.dumps(status))
    window.update(loss=0.0, n=0, wait=0.0, t0=time.perf_counter(), samples=0, penalty=0.0)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def validate(cfg, denv, device, engine, tracker, step: int) -> dict[str, float]:
    size = list(cfg.model.img_size)
    result = evaluate(engine, eval_loader(cfg, denv, size), device, DTYPES[cfg.train.precision])
    tracker.log_metrics(
        {
            f"val/top1 {_size_name(size)}": result["top1"],
            f"val/top5 {_size_name(size)}": result["top5"],
            "val/top1": result["top1"],
            "val/loss": result["loss"],
        },
        step,
    )
    log0(
        denv,
        f"step {step}: val top-1 {100 * result['top1']:.2f}% top-5 {100 * result['top5']:.2f}% "
        f"loss {result['loss']:.4f}",
    )
    return result


def step_time(times: list[float]) -> float | None:
    """Median seconds per optimizer step over the log windows, the first (warm-up) left out."""
    steady = sorted(times[1:] or times)
    return steady[len(steady) // 2] if steady else None


def _size_name(size) -> str:
    return "x".join(str(s) for s in size)


# ---------------------------------------------------------------------------------------------
# the end: checkpoint, resolution sweep, export, summary
# ---------------------------------------------------------------------------------------------
def finish(cfg, denv, engine, spec, checkpointer, tracker, progress, out_dir: Path) -> dict[str, Any]:
    tag = checkpointer.latest()
    if tag is None or int(tag.split("_")[1]) != progress.step:
        tag = checkpointer.save(engine, progress.step, {"progress": vars(progress)})
    dtype = DTYPES[cfg.train.precision]
    sizes = [
        list(s) if not isinstance(s, int) else [s] * len(cfg.model.img_size) for s in cfg.eval.sizes
    ] or [list(cfg.model.img_size)]
    rows = resolution_sweep(engine, lambda size: eval_loader(cfg, denv, size), sizes, denv, dtype)
    summary: dict[str, Any] = {
        "step": progress.step,
        "out_dir": str(out_dir),
        "mlflow_run_id": tracker.run_id,
        "sweep": rows,
        "step_time_s": step_time(progress.step_times),
    }
    for row in rows:
        name = _size_name(row["size"])
        tracker.log_metrics({f"val/top1 {name}": row["top1"], f"val/top5 {name}": row["top5"]}, progress.step)
    main_row = next((r for r in rows if r["size"] == list(cfg.model.img_size)), rows[0])
    tracker.log_metrics({"val/top1": main_row["top1"], "val/top5": main_row["top5"]}, progress.step)
    if cfg.eval.shuffle_patches:
        gen = torch.Generator().manual_seed(cfg.train.seed)
        patch = engine.module.patch_size
        shuffled = evaluate(
            engine, eval_loader(cfg, denv, list(cfg.model.img_size)), next(engine.parameters()).device,
            dtype, transform=lambda x: shuffle_patches(x, patch, gen),
        )  # fmt: skip
        summary["shuffled"] = {k: shuffled[k] for k in ("top1", "top5", "loss", "count")}
        tracker.log_metrics({"val/top1 shuffled": shuffled["top1"]}, progress.step)
        log0(denv, f"eval with shuffled patches: top-1 {100 * shuffled['top1']:.2f}%")
    if summary["step_time_s"] is not None:
        tracker.log_metrics({"train/step_time_s": summary["step_time_s"]}, progress.step)
    if denv.is_main:
        table, plot = write_sweep_report(
            rows, out_dir, title=f"{spec['name']} {cfg.model.encoding} on {cfg.data.dataset}"
        )
        weights = out_dir / "model.safetensors"
        liere.models.save_pretrained(
            consolidated_state_dict(checkpointer.dir, tag), weights, spec["name"], spec["kwargs"]
        )
        for artifact in (table, plot, weights):
            tracker.log_artifact(artifact)
        exported = liere.load_model(weights)  # whole parameters whatever the ZeRO stage
        summary["params"] = sum(p.numel() for p in exported.parameters())
        summary["gflops"] = liere.count_flops(exported)["total"] / 1e9
        if reportable(exported, cfg.sparsity.tile):
            report, md = write_report(exported, cfg, out_dir)
            summary["sparsity"] = {k: report[k] for k in ("tile", "off_diagonal_active", "diagonal_active")}
            tracker.log_metrics({"sparsity/off_diagonal_active": report["off_diagonal_active"]}, progress.step)
            tracker.log_artifact(md)
            print("\n" + md.read_text(), flush=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        tracker.log_artifact(out_dir / "summary.json")
        summary["weights"] = str(weights)
        print("\n" + table.read_text(), flush=True)
        print(f"weights: {weights}  (liere.load_model(path) rebuilds the model without DeepSpeed)")
        print(
            f"MLflow run {tracker.run_id} at {tracker.uri}"
            + ("" if tracker.online else f" (offline: kept in {tracker.offline_dir})"),
            flush=True,
        )
    distributed.barrier()
    return summary
