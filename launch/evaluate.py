"""Evaluate exported weights at several resolutions, and with patches shuffled:

    python launch/evaluate.py runs/compass2d/liere8-s0 --sizes 32 48 64 --shuffle
    python launch/evaluate.py model.safetensors --dataset compass3d --sizes 16 24 32 --shuffle
    python launch/evaluate.py RUN_DIR --sizes 224 320 384 --split val --batch-size 128 --out eval/

CHECKPOINT is an exported ``model.safetensors`` or a run's ``out_dir`` (its ``model.safetensors``,
written at the end of training; exported from ``checkpoints/latest`` first if missing). The data
set, root and backend default to the run's ``config.yaml`` next to the weights. Sizes are one
number per axis (``48``) or one per axis spelled out (``8x224x224``). Writes ``eval.json`` (every
row, with per-sample predictions in ``predictions.npz``), ``eval.md`` and ``eval.png`` to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_size(text: str) -> list[int] | int:
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or NxN(xN)") from None
    if any(p < 1 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: sizes must be positive")
    return parts[0] if len(parts) == 1 else parts


def resolve_weights(checkpoint: str | Path) -> tuple[Path, Path | None]:
    """(weights file, the run's config.yaml or None) for a weights file or a run directory."""
    path = Path(checkpoint)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            weights = _export_latest(path)
        config = path / "config.yaml"
        return weights, config if config.is_file() else None
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (a model.safetensors or a run directory)")
    config = path.parent / "config.yaml"
    return path, config if config.is_file() else None


def _export_latest(run_dir: Path) -> Path:
    """Export ``run_dir/checkpoints/latest`` (a run stopped before its end) to model.safetensors."""
    from omegaconf import OmegaConf

    import liere
    import pipelines
    from liere.engine.checkpoint import Checkpointer, consolidated_state_dict
    from liere.engine.trainer import model_spec

    checkpointer = Checkpointer(run_dir, rank=0, keep=10**6)
    tag = checkpointer.latest()
    config = run_dir / "config.yaml"
    if tag is None or not config.is_file():
        raise FileNotFoundError(
            f"{run_dir}: neither model.safetensors nor a complete checkpoint with config.yaml to export"
        )
    cfg = OmegaConf.load(config)
    spec = model_spec(cfg, pipelines.dataset_info(cfg.data.root, cfg.data.dataset))
    weights = run_dir / "model.safetensors"
    state = consolidated_state_dict(checkpointer.dir, tag)
    liere.models.save_pretrained(state, weights, spec["name"], spec["kwargs"])
    print(f"exported {checkpointer.dir / tag} -> {weights}", flush=True)
    return weights


def evaluate_checkpoint(
    checkpoint: str | Path,
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
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    import liere
    import pipelines
    from liere.engine.evaluate import evaluate, shuffle_patches, write_sweep_report

    weights, config = resolve_weights(checkpoint)
    cfg = OmegaConf.load(config) if config else None
    dataset = dataset or (cfg.data.dataset if cfg else None)
    root = root or (cfg.data.root if cfg else "data")
    split = split or (cfg.data.val_split if cfg else "val")
    backend = backend or (cfg.data.backend if cfg else "webdataset")
    if dataset is None:
        raise ValueError(f"{weights}: no config.yaml beside it; name the data set with --dataset")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = liere.load_model(weights).to(dev).eval()
    train_size = list(model.img_size)
    rank = len(train_size)
    sizes = [[s] * rank if isinstance(s, int) else list(s) for s in (sizes or [train_size])]
    for s in sizes:
        if len(s) != rank:
            raise ValueError(f"size {s} has {len(s)} axes; the model takes {rank}")
    out = Path(out_dir) if out_dir else weights.parent
    out.mkdir(parents=True, exist_ok=True)

    rows, preds = [], {}
    for size in sizes:
        for shuffled in [False, True] if shuffle else [False]:
            loader = pipelines.build_loader(
                backend, root=root, dataset=dataset, split=split, batch_size=batch_size, train=False,
                image_size=size, rank=0, world_size=1, seed=seed, num_workers=workers,
                crop_ratio=cfg.data.get("eval_crop_ratio") if cfg else None,
            )  # fmt: skip
            gen = torch.Generator().manual_seed(seed)
            transform = (lambda x, g=gen: shuffle_patches(x, model.patch_size, g)) if shuffled else None
            r = evaluate(model, loader, dev, transform=transform, predictions=True)
            name = "x".join(map(str, size)) + (" shuffled" if shuffled else "")
            preds[name] = np.stack([r.pop("index").numpy(), r.pop("label").numpy(), r.pop("pred").numpy()])
            rows.append({"size": size, "shuffled": shuffled, **r})
            print(
                f"eval {name}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  "
                f"loss {r['loss']:.4f}  ({r['count']} samples)",
                flush=True,
            )
    np.savez_compressed(out / "predictions.npz", **preds)  # rows: index, label, predicted class
    result = {
        "weights": str(weights),
        "dataset": dataset,
        "split": split,
        "train_size": train_size,
        "rows": rows,
        "predictions": str(out / "predictions.npz"),
    }
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    plain = [r for r in rows if not r["shuffled"]]
    table, plot = write_sweep_report(plain, out, title=f"{weights.parent.name} on {dataset}/{split}")
    table.rename(out / "eval.md")
    plot.rename(out / "eval.png")
    with open(out / "eval.md", "a") as f:
        for r in (r for r in rows if r["shuffled"]):
            f.write(f"\nPatches shuffled at {'x'.join(map(str, r['size']))}: top-1 {100 * r['top1']:.2f}%\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("checkpoint", help="model.safetensors or a run directory")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None, help="default: the training size")
    p.add_argument("--shuffle", action="store_true", help="also evaluate every size with patches shuffled")
    p.add_argument("--dataset", default=None, help="default: the run's config.yaml")
    p.add_argument("--data-root", default=None, help="default: the run's config.yaml, else data")
    p.add_argument("--split", default=None, help="default: the run's val split")
    p.add_argument("--backend", default=None, choices=["webdataset", "ffcv", "dali"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seeds the patch permutations")
    p.add_argument("--out", default=None, help="output folder (default: beside the weights)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    args = p.parse_args(argv)
    from pipelines.errors import DataError

    try:
        evaluate_checkpoint(
            args.checkpoint, args.sizes, args.shuffle, args.dataset, args.data_root, args.split,
            args.backend, args.batch_size, args.workers, args.seed, args.out, args.device,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
