"""Evaluation of exported weights at several resolutions, and with patches shuffled (launch/evaluate.py).

A checkpoint is an exported ``model.safetensors`` or a run's ``out_dir`` (its ``model.safetensors``,
written at the end of training; exported from ``checkpoints/latest`` first if missing). The data set,
root and backend default to the run's ``config.yaml`` next to the weights. Writes ``eval.json`` (every
row, with per-sample predictions in ``predictions.npz``), ``eval.md`` and ``eval.png``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def parse_size(text: str) -> list[int] | int:
    """A size from the command line: ``48`` (every axis) or one number per axis, ``8x224x224``."""
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or NxN(xN)") from None
    if any(p < 1 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: sizes must be positive")
    return parts[0] if len(parts) == 1 else parts


def row_name(row: dict[str, Any]) -> str:
    """An evaluation row's name in predictions, reports and metrics: ``16x16`` or ``16x16 shuffled``."""
    from liere.engine.evaluate import size_name

    return size_name(row["size"]) + (" shuffled" if row.get("shuffled") else "")


def resolve_weights(checkpoint: str | Path) -> tuple[Path, Path | None]:
    """(weights file, the run's config.yaml or None) for a weights file or a run directory."""
    path = Path(checkpoint)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            weights = export_latest(path)
        config = path / "config.yaml"
        return weights, config if config.is_file() else None
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (a model.safetensors or a run directory)")
    config = path.parent / "config.yaml"
    return path, config if config.is_file() else None


def export_latest(run_dir: Path) -> Path:
    """Export ``run_dir/checkpoints/latest`` (a run stopped before its end) to model.safetensors."""
    from omegaconf import OmegaConf

    import pipelines
    from liere.engine.checkpoint import Checkpointer, export_checkpoint
    from liere.engine.data import model_spec

    checkpointer = Checkpointer(run_dir, rank=0, keep=10**6)
    tag = checkpointer.latest()
    config = run_dir / "config.yaml"
    if tag is None or not config.is_file():
        raise FileNotFoundError(
            f"{run_dir}: neither model.safetensors nor a complete checkpoint with config.yaml to export"
        )
    cfg = OmegaConf.load(config)
    spec = model_spec(cfg, pipelines.dataset_info(cfg.data.root, cfg.data.dataset))
    weights = export_checkpoint(checkpointer.dir, tag, spec, run_dir / "model.safetensors")
    print(f"exported {checkpointer.dir / tag} -> {weights}", flush=True)
    return weights


@dataclass
class EvalData:
    """What the evaluation reads: the command line's choices, else the run's config.yaml."""

    dataset: str | None
    root: str
    split: str
    backend: str
    batch_size: int
    workers: int
    seed: int
    crop_ratio: float | None

    def loader(self, size: list[int]):
        """The split at ``size`` through the engine's evaluation loader, in this one process."""
        from omegaconf import OmegaConf

        from liere.engine.data import eval_loader
        from liere.engine.distributed import DistEnv

        view = OmegaConf.create({
            "data": {
                "dataset": self.dataset, "root": self.root, "val_split": self.split, "backend": self.backend,
                "access": "indexed",  # the prepared local shards of the run's data set
                "batch_size": self.batch_size, "eval_batch_size": self.batch_size, "workers": self.workers,
                "eval_crop_ratio": self.crop_ratio,
            },
            "train": {"seed": self.seed},
        })  # fmt: skip
        return eval_loader(view, DistEnv(rank=0, local_rank=0, world_size=1, launcher="single"), size)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    sizes: list[Any] | None = None,
    shuffle: bool = False,
    dataset: str | None = None,
    root: str | None = None,
    split: str | None = None,
    backend: str | None = None,
    batch_size: int = 128,
    workers: int = 1,
    seed: int = 0,
    out_dir: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate at every size (and shuffled, if asked); write eval.json/.md/.png and predictions.npz.

    Rows are {"size", "shuffled", "top1", "top5", "loss", "count"}. Runs in this one process.
    """
    import torch
    from omegaconf import OmegaConf

    import liere
    from liere.engine.evaluate import per_axis_sizes

    weights, config = resolve_weights(checkpoint)
    cfg = OmegaConf.load(config) if config else None
    data = EvalData(
        dataset=dataset or (cfg.data.dataset if cfg else None),
        root=root or (cfg.data.root if cfg else "data"),
        split=split or (cfg.data.val_split if cfg else "val"),
        backend=backend or (cfg.data.backend if cfg else "webdataset"),
        batch_size=batch_size, workers=workers, seed=seed,
        crop_ratio=cfg.data.get("eval_crop_ratio") if cfg else None,
    )  # fmt: skip
    if data.dataset is None:
        raise ValueError(f"{weights}: no config.yaml beside it; name the data set with --dataset")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = liere.load_model(weights).to(dev).eval()
    train_size = list(model.img_size)
    sizes = per_axis_sizes(sizes or [train_size], len(train_size))
    out = Path(out_dir) if out_dir else weights.parent
    out.mkdir(parents=True, exist_ok=True)
    rows, preds = evaluate_sizes(model, data, sizes, shuffle=shuffle, device=dev)
    result = {
        "weights": str(weights),
        "dataset": data.dataset,
        "split": data.split,
        "train_size": train_size,
        "rows": rows,
        "predictions": str(out / "predictions.npz"),
    }
    write_outputs(result, preds, out, title=f"{weights.parent.name} on {data.dataset}/{data.split}")
    return result


def evaluate_sizes(
    model, data: EvalData, sizes: list[list[int]], *, shuffle: bool, device
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, predictions): every size, then shuffled if asked; predictions by row name, each
    (3, samples): data-set index, label, predicted class."""
    import numpy as np
    import torch

    from liere.engine.evaluate import evaluate, result_line, shuffle_patches

    rows, preds = [], {}
    for size in sizes:
        for shuffled in [False, True] if shuffle else [False]:
            gen = torch.Generator().manual_seed(data.seed)
            transform = (lambda x, g=gen: shuffle_patches(x, model.patch_size, g)) if shuffled else None
            r = evaluate(model, data.loader(size), device, transform=transform, predictions=True)
            name = row_name({"size": size, "shuffled": shuffled})
            preds[name] = np.stack([r.pop("index").numpy(), r.pop("label").numpy(), r.pop("pred").numpy()])
            rows.append({"size": size, "shuffled": shuffled, **r})
            print(result_line(name, r), flush=True)
    return rows, preds


def write_outputs(result: dict[str, Any], preds: dict[str, Any], out: Path, *, title: str) -> None:
    """predictions.npz, eval.json, and eval.md / eval.png: the resolution table and plot, then the
    shuffled rows."""
    import numpy as np

    from liere.engine.evaluate import size_name, write_sweep_report

    np.savez_compressed(out / "predictions.npz", **preds)  # rows: index, label, predicted class
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    rows = result["rows"]
    write_sweep_report([r for r in rows if not r["shuffled"]], out, title=title, stem="eval")
    with open(out / "eval.md", "a") as f:
        for r in (r for r in rows if r["shuffled"]):
            f.write(f"\nPatches shuffled at {size_name(r['size'])}: top-1 {100 * r['top1']:.2f}%\n")
