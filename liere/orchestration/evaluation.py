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
    """An evaluation row's name in predictions, reports and metrics: ``16x16`` (zoom: the inputs
    resized), ``16x16 extent`` (a larger canvas at the training scale) or ``16x16 shuffled``."""
    from liere.engine.evaluate import size_name

    extent = " extent" if row.get("protocol") == "extent" else ""
    return size_name(row["size"]) + extent + (" shuffled" if row.get("shuffled") else "")


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
    from liere.engine.checkpoint import export_checkpoint, latest_of_run

    found = latest_of_run(run_dir)
    if found is None:
        raise FileNotFoundError(
            f"{run_dir}: neither model.safetensors nor a complete checkpoint with config.yaml to export"
        )
    ckpt_dir, tag, spec = found
    weights = export_checkpoint(ckpt_dir, tag, spec, run_dir / "model.safetensors")
    print(f"exported {ckpt_dir / tag} -> {weights}", flush=True)
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

    def loader(self, size: list[int], split: str | None = None):
        """The split (default: this view's) at ``size`` through the engine's evaluation loader, in this one process."""
        from omegaconf import OmegaConf

        from liere.engine.config import DataConfig
        from liere.engine.data import eval_loader
        from liere.engine.distributed import DistEnv

        data = OmegaConf.merge(OmegaConf.structured(DataConfig), {  # every other key at its default
            "dataset": self.dataset, "root": self.root, "val_split": split or self.split, "backend": self.backend,
            "access": "indexed",  # the prepared local shards of the run's data set
            "batch_size": self.batch_size, "eval_batch_size": self.batch_size, "workers": self.workers,
            "eval_crop_ratio": self.crop_ratio,
        })  # fmt: skip
        view = OmegaConf.create({"data": data, "train": {"seed": self.seed}})
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
    protocols: list[str] | None = None,
    positions: str | None = None,
) -> dict[str, Any]:
    """Evaluate at every size under each protocol (and shuffled, if asked); write eval.json/.md/.png
    and predictions.npz. ``protocols`` default to the run's ``eval.protocols``, else zoom.
    ``positions``: evaluate a rotary model with another position scheme than it trained with (the
    same weights; ``liere.encodings.positions.SCHEMES``); its outputs then default to
    ``eval_positions-<scheme>/`` beside the weights, so the run's own evaluation is kept.

    Rows are {"size", "protocol", "shuffled", "top1", "top5", "loss", "count"}. Runs in this one process.
    """
    import torch
    from omegaconf import OmegaConf

    import liere
    from liere.engine.evaluate import per_axis_sizes

    weights, config = resolve_weights(checkpoint)
    cfg = OmegaConf.load(config) if config else None
    data = _eval_data(
        cfg, dataset=dataset, root=root, split=split, backend=backend,
        batch_size=batch_size, workers=workers, seed=seed,
    )  # fmt: skip
    if data.dataset is None:
        raise ValueError(f"{weights}: no config.yaml beside it; name the data set with --dataset")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = liere.load_model(weights).to(dev).eval()
    if positions is not None:
        use_positions(model, positions, weights)
    train_size = list(model.img_size)
    sizes = per_axis_sizes(sizes or [train_size], len(train_size))
    out = Path(out_dir) if out_dir else weights.parent / (f"eval_positions-{positions}" if positions else "")
    out.mkdir(parents=True, exist_ok=True)
    protocols = list(protocols or (cfg.get("eval", {}).get("protocols") if cfg else None) or ["zoom"])
    rows, preds = evaluate_sizes(model, data, sizes, shuffle=shuffle, device=dev, protocols=protocols)
    result = {
        "weights": str(weights),
        "dataset": data.dataset,
        "split": data.split,
        "train_size": train_size,
        "positions": getattr(model.encoding, "position_scheme", None),
        "rows": rows,
        "predictions": str(out / "predictions.npz"),
    }
    write_outputs(result, preds, out, title=f"{weights.parent.name} on {data.dataset}/{data.split}")
    return result


def _eval_data(cfg, *, dataset, root, split, backend, batch_size: int, workers: int, seed: int) -> EvalData:
    """What to evaluate on: each argument given, else the run's config, else the defaults."""
    return EvalData(
        dataset=dataset or (cfg.data.dataset if cfg else None),
        root=root or (cfg.data.root if cfg else "data"),
        split=split or (cfg.data.val_split if cfg else "val"),
        backend=backend or (cfg.data.backend if cfg else "webdataset"),
        batch_size=batch_size, workers=workers, seed=seed,
        crop_ratio=cfg.data.get("eval_crop_ratio") if cfg else None,
    )  # fmt: skip


def use_positions(model, positions: str, weights: Path) -> None:
    """Evaluate a rotary model with another position scheme (the same weights; setting the scheme
    drops the rotations the encoding cached for the old one)."""
    from liere.encodings.positions import SCHEMES

    if positions not in SCHEMES:
        raise ValueError(
            f"positions {positions!r}: not a position scheme; expected one of {', '.join(SCHEMES)}"
        )
    encoding = model.encoding
    if not getattr(encoding, "is_rotary", False):
        raise ValueError(
            f"positions {positions!r}: {weights} holds {type(encoding).__name__}, which has no position scheme"
        )
    encoding.position_scheme = positions


def evaluate_sizes(
    model, data: EvalData, sizes: list[list[int]], *, shuffle: bool, device, protocols=("zoom",)
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, predictions): every size under each protocol, zoom also shuffled if asked; predictions
    by row name, each (3, samples): data-set index, label, predicted class."""
    import numpy as np
    import torch

    from liere.engine.config import PROTOCOLS
    from liere.engine.evaluate import evaluate, result_line, shuffle_patches

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown evaluation protocol(s) {unknown}; expected some of {PROTOCOLS}")
    rows, preds = [], {}
    for protocol in protocols:
        splits = (
            [extent_split_for(data, list(model.img_size), size) for size in sizes]
            if protocol == "extent"
            else [None] * len(sizes)
        )
        for size, split in zip(sizes, splits):
            for shuffled in [False, True] if shuffle and protocol == "zoom" else [False]:
                gen = torch.Generator().manual_seed(data.seed)
                transform = (lambda x, g=gen: shuffle_patches(x, model.patch_size, g)) if shuffled else None
                r = evaluate(model, data.loader(size, split), device, transform=transform, predictions=True)
                row = {"size": size, "protocol": protocol, "shuffled": shuffled}
                name = row_name(row)
                preds[name] = np.stack(
                    [r.pop("index").numpy(), r.pop("label").numpy(), r.pop("pred").numpy()]
                )
                rows.append({**row, **r})
                print(result_line(name, r), flush=True)
    return rows, preds


def extent_split_for(data: EvalData, train_size: list[int], size: list[int]) -> str:
    """The split the extent protocol reads at ``size``: the split itself at the training size, else
    its ``-extent<S>`` sibling (prepared on first use for an embedded data set), S in prepared pixels
    (``size`` x the prepared size / the training size). Equal sides only."""
    import pipelines
    from pipelines.sources import extent_sources
    from pipelines.sources.embedded import extent_split

    if list(size) == list(train_size):
        return data.split
    if len(set(size)) != 1:
        raise ValueError(
            f"extent protocol: size {size} must have equal sides (the data set draws square canvases)"
        )
    drawing = extent_sources()
    if data.dataset not in drawing:
        raise ValueError(
            f"extent protocol: data set {data.dataset!r} does not draw larger canvases ({', '.join(drawing)} do)"
        )
    info = pipelines.dataset_info(data.root, data.dataset)
    # the canvas in prepared pixels: a set prepared larger than the model's input (digits at 32 for a
    # 16 px model) is resized by the loader, so the model's 24 px extent is the prepared 48 px canvas
    native = (info.get("native_size") or train_size)[0]
    canvas = size[0] * native / train_size[0]
    if canvas != int(canvas):
        raise ValueError(
            f"extent protocol: size {size} is {canvas:g} prepared pixels of {data.dataset} (prepared at "
            f"{native}, trained at {train_size[0]}): choose a size whose canvas is a whole number of pixels"
        )
    split = extent_split(data.split, int(canvas))
    if split not in info["splits"]:  # prepared before the data set drew extent splits: add them
        info = pipelines.ensure_prepared(
            data.dataset, data.root, formats=["ffcv" if data.backend == "ffcv" else "webdataset"]
        )
    if split not in info["splits"]:
        have = sorted(s for s in info["splits"] if s.startswith(data.split + "-extent"))
        raise ValueError(f"extent protocol: {data.dataset} has no split {split!r} (it draws {have})")
    return split


def write_outputs(result: dict[str, Any], preds: dict[str, Any], out: Path, *, title: str) -> None:
    """predictions.npz, eval.json, and eval.md / eval.png: the resolution table and plot, then the
    shuffled rows."""
    import numpy as np

    from liere.engine.evaluate import size_name, write_sweep_report

    np.savez_compressed(out / "predictions.npz", **preds)  # rows: index, label, predicted class
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    rows = result["rows"]
    zoom = [r for r in rows if not r["shuffled"] and r.get("protocol", "zoom") == "zoom"]
    write_sweep_report(zoom, out, title=title, stem="eval")
    with open(out / "eval.md", "a") as f:
        for r in (r for r in rows if r.get("protocol") == "extent"):
            f.write(
                f"\nExtent (larger canvas, training scale) {size_name(r['size'])}: top-1 {100 * r['top1']:.2f}%\n"
            )
        for r in (r for r in rows if r["shuffled"]):
            f.write(f"\nPatches shuffled at {size_name(r['size'])}: top-1 {100 * r['top1']:.2f}%\n")
