"""How far did learned sparsity prune the LieRE generators? Group-norm statistics of exported runs.

    python benchmarks/sparsity_groups.py runs/compare/compass2d/liere64-s0 runs/compare/compass2d-sparsity/liere64-l5e-2-s0
    python benchmarks/sparsity_groups.py runs/compare/compass2d-sparsity/*-s0 --init --tile 8

For each run (a run directory or its ``model.safetensors``) the LieRE generators are cut into
``tile`` x ``tile`` coupling groups (``liere.encodings.sparsity.tile_group_norms``, the groups the
``sparsity`` penalty acts on) and, per generator (layer, head, block), each group's norm is divided
by the generator's largest. Printed per run: the share of groups at exactly 0 (all, per layer, and
of the tiles on the diagonal; ``sparsity.method: proximal`` makes such zeros), the mean group norm,
the smallest relative norm over all generators, and the 10% quantile and median of the relative norms; a group below the report's
threshold (``sparsity.threshold``, 5%) counts as switched off. ``--init`` adds a row per run for a
fresh draw of the same model with ``torch.manual_seed(train.seed)`` (the engine draws after building
its data, so this is the init's distribution, not necessarily the run's own first weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere.encodings.sparsity import ZERO, coupling_mask, tile_group_norms
from liere.models import create_model, load_model
from liere.models.io import read_spec


def _weights(path: Path) -> Path:
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise SystemExit(f"{path}: no model.safetensors (train the run to the end, or export it)")
    return weights


def group_stats(model: torch.nn.Module, tile: int) -> dict[str, float]:
    enc = model.encoding
    if not hasattr(enc, "generator_matrices"):
        raise SystemExit(f"{type(enc).__name__}: not a LieRE encoding, there are no generators to cut")
    with torch.no_grad():
        norms = tile_group_norms(enc.generator_matrices().float(), tile)  # (L, H, K, n, n), symmetric
    n = norms.shape[-1]
    upper = coupling_mask(n)
    groups = norms[..., upper]  # every coupling once: (L, H, K, groups)
    rel = (groups / groups.amax(-1, keepdim=True).clamp_min(1e-12)).flatten()
    zero = groups <= ZERO  # exactly 0: the proximal step's zeros
    diag = torch.eye(n, dtype=torch.bool)[upper]
    return {
        "groups_per_generator": int(upper.sum()),
        "generators": int(groups[..., 0].numel()),
        "zero_share": round(float(zero.float().mean()), 3),
        "zero_share_diagonal": round(float(zero[..., diag].float().mean()), 3),
        "zero_share_per_layer": [round(float(z.float().mean()), 3) for z in zero],
        "mean_group_norm": round(float(groups.mean()), 3),
        "smallest_relative": round(float(rel.min()), 3),
        "q10_relative": round(float(rel.quantile(0.1)), 3),
        "median_relative": round(float(rel.median()), 3),
    }


def _config(weights: Path) -> dict:
    cfg = weights.parent / "config.yaml"
    if not cfg.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(cfg), resolve=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories or model.safetensors files")
    p.add_argument("--tile", type=int, help="group size (default: the run's sparsity.tile, else 8)")
    p.add_argument("--threshold", type=float, default=0.05, help="relative norm below which a group is off")
    p.add_argument("--init", action="store_true", help="also a fresh draw of each model at its seed")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        weights = _weights(run)
        cfg = _config(weights)
        tile = args.tile or cfg.get("sparsity", {}).get("tile", 8)
        sparsity = cfg.get("sparsity", {})
        penalty = f"{sparsity.get('method', 'penalty')} {sparsity.get('weight', 0.0)}"
        models = [("trained", load_model(weights))]
        if args.init:
            torch.manual_seed(cfg.get("train", {}).get("seed", 0))
            spec = read_spec(weights)
            models.append(("init", create_model(spec["name"], **spec["kwargs"])))
        for state, model in models:
            stats = group_stats(model, tile)
            off = stats["smallest_relative"] < args.threshold
            rows.append(
                {"run": str(run), "state": state, "tile": tile, "penalty": penalty, "any_off": off, **stats}
            )
    print(
        "| run | state | sparsity | groups at 0 (%) | per layer (%) | diagonal tiles at 0 (%) | mean group norm "
        "| smallest / largest | 10% quantile | median | any group off |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        layers = " / ".join(f"{100 * z:.0f}" for z in r["zero_share_per_layer"])
        print(f"| {r['run']} | {r['state']} | {r['penalty']} | {100 * r['zero_share']:.1f} | {layers} | "
              f"{100 * r['zero_share_diagonal']:.1f} | {r['mean_group_norm']} | {r['smallest_relative']} | "
              f"{r['q10_relative']} | {r['median_relative']} | {'yes' if r['any_off'] else 'no'} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
