"""Per-step rotation angles and the relative share of the logits, per encoding, init and grid.

    python benchmarks/rotation_angles.py
    python benchmarks/rotation_angles.py --grids 4x4 8x8 14x14 4x4x4 --encodings liere8,liere64,rope_mixed
    python benchmarks/rotation_angles.py --head-dim 64 --heads 6 --depth 12      # a ViT-S/16
    python benchmarks/rotation_angles.py --runs runs/compare/compass2d-sparsity-rev2/liere64-*-s0  # trained

For each (encoding, init, grid), at initialisation (liere.encodings.angles): the median and max
angle one patch step turns a head vector by (every rotation frequency of every axis's generator
times the step of the encoding's position scheme), the share of those above pi (neighbouring
patches alias), and the share of the q.k logit variance over token pairs that their integer offset
explains (1 for commuting generators). Means over ``--draws`` seeds of the initialisation.
``--runs`` measures trained models instead (run directories or their ``model.safetensors``), on
their own training grid. Prints a table and saves JSON to benchmarks/results/rotation_angles.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere.encodings.angles import angle_summary, relative_share, step_angles
from liere.encodings.factory import build

LIERE_INITS = ("paper", "grid", "small")
OUT = Path(__file__).resolve().parent / "results" / "rotation_angles.json"


def arms(encodings: list[str]) -> list[tuple[str, dict]]:
    """(label, options): every LieRE encoding under each init, the others as they are."""
    out = []
    for name in encodings:
        if name.startswith("liere"):
            out += [(f"{name} init={i}", {"init": i}) for i in LIERE_INITS]
        else:
            out.append((name, {}))
    return out


def measure(
    name: str, options: dict, grid: tuple[int, ...], *, geometry: dict, draws: int, share: bool
) -> dict:
    rows = []
    for seed in range(draws):
        torch.manual_seed(seed)
        enc = build(name, num_axes=len(grid), grid_shape=grid, **geometry, **options)
        row = angle_summary(step_angles(enc))
        if share:
            row["relative_share"] = relative_share(enc, draws=32, seed=seed)
        rows.append(row)
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def measure_runs(paths: list[Path], max_tokens: int) -> list[dict]:
    """The same statistics for trained models, each on its training grid."""
    from liere.models import load_model

    rows = []
    for path in paths:
        weights = path / "model.safetensors" if path.is_dir() else path
        if not weights.is_file():
            raise SystemExit(
                f"{path}: no model.safetensors (train the run to the end, or export its weights)"
            )
        enc = load_model(weights).encoding
        if not hasattr(enc, "generator_matrices"):
            raise SystemExit(f"{path}: {type(enc).__name__} has no rotation generators to measure")
        grid = tuple(enc.grid_shape)
        row = {"encoding": str(path), "grid": "x".join(map(str, grid)), **angle_summary(step_angles(enc))}
        share = relative_share(enc, draws=32) if torch.tensor(grid).prod() <= max_tokens else math.nan
        if math.isfinite(share):  # (nan: the logits do not vary with position at all)
            row["relative_share"] = share
        rows.append(row)
    return rows


def _print_row(r: dict) -> None:
    rs = f"{100 * r['relative_share']:.0f}%" if "relative_share" in r else "-"
    print(
        f"| {r['encoding']} | {r['grid']} | {r['median']:.2f} | {r['max']:.2f} | {100 * r['above_pi']:.0f}% | {rs} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encodings", default="liere8,liere64,rope_mixed,string,comrope_ld")
    p.add_argument("--grids", nargs="+", default=["4x4", "8x8", "14x14", "32x32", "4x4x4", "8x8x8"])
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--draws", type=int, default=3, help="initialisation seeds averaged")
    p.add_argument(
        "--max-share-tokens", type=int, default=256, help="relative share only up to this many tokens"
    )
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--runs", nargs="+", type=Path, help="trained runs to measure instead of initialisations")
    args = p.parse_args(argv)
    geometry = {"head_dim": args.head_dim, "num_heads": args.heads, "depth": args.depth}
    results = []
    print(
        "| encoding | grid | median (rad) | max (rad) | above pi | relative share |\n|---|---|---|---|---|---|"
    )
    if args.runs:
        results = measure_runs(args.runs, args.max_share_tokens)
        for r in results:
            _print_row(r)
    for grid_text in [] if args.runs else args.grids:
        grid = tuple(int(s) for s in grid_text.split("x"))
        share = torch.tensor(grid).prod() <= args.max_share_tokens
        for label, options in arms(args.encodings.split(",")):
            name = label.split()[0]
            r = measure(name, options, grid, geometry=geometry, draws=args.draws, share=bool(share))
            results.append({"encoding": label, "grid": grid_text, **r})
            _print_row(results[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"geometry": geometry, "draws": args.draws, "rows": results}, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
