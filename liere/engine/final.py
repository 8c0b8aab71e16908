"""The end of a run: the evaluation sweep (sizes, shuffled patches, canvases), then rank 0's exports,
reports, summary and a few lines that say in plain words what the numbers show."""

from __future__ import annotations

import json
from typing import Any

import torch

import liere
from liere.engine.canvas import place_on_canvas
from liere.engine.checkpoint import export_checkpoint
from liere.engine.distributed import log0
from liere.engine.ema import evaluate_ema, export_ema
from liere.engine.evaluate import (
    evaluate,
    per_axis_sizes,
    resolution_sweep,
    shuffle_patches,
    size_name,
    write_sweep_report,
)
from liere.engine.regularizer import reportable, write_report


def final_evaluation(trainer) -> dict[str, Any]:
    """Every rank: top-1/top-5 at each ``eval.sizes`` (resized inputs), with shuffled patches, and on
    each ``eval.canvas_sizes`` (inputs at the training size on a larger canvas); logged to MLflow."""
    from liere.engine.data import eval_loader

    cfg, denv, engine, step = trainer.cfg, trainer.denv, trainer.engine, trainer.progress.step
    train_size, dtype = list(cfg.model.img_size), trainer.precision.dtype
    sizes = per_axis_sizes(cfg.eval.sizes, len(train_size)) or [train_size]
    rows = resolution_sweep(engine, lambda size: eval_loader(cfg, denv, size), sizes, denv, dtype)
    out: dict[str, Any] = {"sweep": rows}
    for row in rows:
        name = size_name(row["size"])
        trainer.tracker.log_metrics({f"val/top1 {name}": row["top1"], f"val/top5 {name}": row["top5"]}, step)
    main_row = next((r for r in rows if r["size"] == train_size), rows[0])
    trainer.tracker.log_metrics({"val/top1": main_row["top1"], "val/top5": main_row["top5"]}, step)
    patch = engine.module.patch_size
    probes = [("shuffled", None)] if cfg.eval.shuffle_patches else []
    probes += [("canvas", size) for size in per_axis_sizes(cfg.eval.canvas_sizes, len(train_size))]
    for kind, size in probes:
        gen = torch.Generator().manual_seed(cfg.train.seed)
        if kind == "shuffled":
            transform = lambda x, gen=gen: shuffle_patches(x, patch, gen)  # noqa: E731
        else:
            transform = lambda x, gen=gen, size=size: place_on_canvas(x, size, patch, gen)  # noqa: E731
        result = evaluate(
            engine, eval_loader(cfg, denv, train_size), trainer.device, dtype, transform=transform
        )
        result = {k: result[k] for k in ("top1", "top5", "loss", "count")}
        if kind == "shuffled":
            out["shuffled"] = result
            trainer.tracker.log_metrics({"val/top1 shuffled": result["top1"]}, step)
            log0(denv, f"eval with shuffled patches: top-1 {100 * result['top1']:.2f}%")
        else:
            out.setdefault("canvas", []).append({"size": size, **result})
            trainer.tracker.log_metrics({f"val/top1 canvas {size_name(size)}": result["top1"]}, step)
            log0(
                denv,
                f"eval on a {size_name(size)} canvas (training scale): top-1 {100 * result['top1']:.2f}%",
            )
    if getattr(trainer, "ema", None) is not None:
        out["ema"] = evaluate_ema(trainer)
    return out


def write_outputs(trainer, tag: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Rank 0: the sweep table and plot, exported weights, the sparsity report, summary.json."""
    cfg, tracker, out_dir = trainer.cfg, trainer.tracker, trainer.out_dir
    title = f"{cfg.model.name} {cfg.model.encoding} on {cfg.data.dataset}"
    table, plot = write_sweep_report(summary["sweep"], out_dir, title=title)
    weights = export_checkpoint(trainer.checkpointer.dir, tag, trainer.spec, out_dir / "model.safetensors")
    ckpt_dir = trainer.checkpointer.dir
    ema = export_ema(ckpt_dir, tag, trainer.spec, weights, out_dir / "model_ema.safetensors")
    for artifact in (table, plot, weights, ema):
        if artifact is not None:
            tracker.log_artifact(artifact)
    exported = liere.load_model(weights)  # whole parameters whatever the ZeRO stage
    extra: dict[str, Any] = {
        "params": sum(p.numel() for p in exported.parameters()),
        "gflops": liere.count_flops(exported)["total"] / 1e9,
    }
    if reportable(exported, cfg.sparsity.tile, shrunk=cfg.sparsity.weight > 0):
        report, md = write_report(exported, cfg, out_dir)
        extra["sparsity"] = {k: report[k] for k in ("tile", "off_diagonal_active", "diagonal_active")}
        active = {f"sparsity/{k}": report[k] for k in ("off_diagonal_active", "diagonal_active")}
        tracker.log_metrics({k: v for k, v in active.items() if v is not None}, trainer.progress.step)
        tracker.log_artifact(md)
        print("\n" + md.read_text(), flush=True)
    (out_dir / "summary.json").write_text(json.dumps({**summary, **extra}, indent=1))
    tracker.log_artifact(out_dir / "summary.json")
    print("\n" + table.read_text(), flush=True)
    print(f"weights: {weights}  (liere.load_model(path) rebuilds the model without DeepSpeed)")
    print(
        f"MLflow run {tracker.run_id or '(started offline)'} at {tracker.uri}"
        + ("" if tracker.online else f" (offline: kept in {tracker.offline_dir})"),
        flush=True,
    )
    replay = tracker.replay_hint()  # something is kept offline: the command that uploads it
    if replay:
        into = f"into run {tracker.run_id}" if tracker.run_id else "as a new run (it started offline)"
        print(f"once the server is back, upload what is kept offline {into}: {replay}", flush=True)
    print("\n" + plain_summary(cfg, {**summary, **extra}), flush=True)
    page = tracker.run_page()
    if page and not page.startswith("http"):
        print(f"to open it: make ui, then http://127.0.0.1:5000/{page}", flush=True)
    elif page:
        print(f"to open it: {page}", flush=True)
    return {**extra, "weights": str(weights), **({"ema_weights": str(ema)} if ema else {})}


def plain_summary(cfg, summary: dict[str, Any]) -> str:
    """What the numbers show, in a few sentences a newcomer can read."""
    train_size = list(cfg.model.img_size)
    rows = {size_name(r["size"]): r for r in summary["sweep"]}
    main = rows.get(size_name(train_size)) or summary["sweep"][0]
    lines = [
        f"What this shows: {cfg.model.encoding} classifies {100 * main['top1']:.1f}% of the "
        f"{main['count']} validation images at the training size {size_name(train_size)}."
    ]
    for r in summary.get("canvas", []):
        lines.append(
            f"  On a {size_name(r['size'])} canvas, the same images at the same scale but anywhere in a "
            f"larger field of view, it is right on {100 * r['top1']:.1f}%: how well the position encoding "
            f"carries what it learned to positions never seen in training."
        )
    for name, r in rows.items():
        if r["size"] != train_size:
            lines.append(
                f"  Resized to {name} (the objects larger, a grid of patches it never saw): {100 * r['top1']:.1f}%."
            )
    if "shuffled" in summary:
        lines.append(
            f"  With its patches shuffled: {100 * summary['shuffled']['top1']:.1f}% (how much it relies on "
            "where each patch is; a model that ignores position would not drop)."
        )
    return "\n".join(lines)
