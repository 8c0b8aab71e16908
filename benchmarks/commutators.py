"""How far LieRE's generators are from commuting, before and after training.

    python benchmarks/commutators.py runs/compare/compass3d-rev2 --json commutators.json
    python benchmarks/commutators.py runs/compare/compass3d-5500 --json commutators.json --merge

RoPE-Mixed's and STRING's rotations are exponentials of commuting generators: the rotation of a
position is a product of one rotation per axis, in any order. LieRE's generators (one skew block
per axis) need not commute, so exp(p_x A_x + p_y A_y + p_z A_z) is not that product. For each LieRE
run (a run folder, or every run of a sweep folder) this prints, over layers, heads and blocks, the
mean relative commutator ||[A_i, A_j]||_F / (||A_i||_F ||A_j||_F) over axis pairs (0: commuting;
about sqrt(2 / g) for independent Gaussian g x g blocks, the ``init: small`` draw), the mean
generator norm ||A_i||_F, the same two for a fresh model of the run's spec (the init), and the
run's top-1 at the training size. Runs of other encodings are skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import liere
from liere.encodings.liere import LieRE
from liere.models.io import read_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plateau_exit import run_dirs, save_rows


def commutator_stats(encoding: LieRE) -> dict[str, float]:
    """Mean relative commutator over axis pairs, mean Frobenius norm, and the number of axes."""
    a = encoding.generator_matrices().detach().double()  # (axes, L, H, blocks, g, g)
    norms = a.flatten(-2).norm(dim=-1)
    ratios = [
        ((a[i] @ a[j] - a[j] @ a[i]).flatten(-2).norm(dim=-1) / (norms[i] * norms[j])).mean()
        for i, j in itertools.combinations(range(a.shape[0]), 2)
    ]
    return {"commutator": float(torch.stack(ratios).mean()), "norm": float(norms.mean()), "axes": a.shape[0]}


def measure(run: Path) -> dict | None:
    """The row of one run with exported weights; None for a run of another encoding."""
    weights = run / "model.safetensors"
    spec = read_spec(weights)
    trained = liere.load_model(weights)
    if not isinstance(trained.encoding, LieRE):
        return None
    torch.manual_seed(0)
    fresh = liere.create_model(spec["name"], **spec["kwargs"])
    summary = json.loads((run / "summary.json").read_text())
    top1 = summary["sweep"][0]["top1"] if summary.get("sweep") else None
    init, learned = commutator_stats(fresh.encoding), commutator_stats(trained.encoding)
    return {
        "run": run.name,
        "encoding": spec["kwargs"].get("encoding"),
        "axes": learned["axes"],
        "top1": top1,
        "commutator_init": init["commutator"],
        "commutator_trained": learned["commutator"],
        "norm_init": init["norm"],
        "norm_trained": learned["norm"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help="run folders or sweep folders")
    p.add_argument("--json", type=Path, default=None, help="save the rows here")
    p.add_argument("--merge", action="store_true", help="with --json: keep the file's rows of other runs")
    args = p.parse_args(argv)
    with_weights = [run for run in run_dirs(args.paths) if (run / "model.safetensors").is_file()]
    rows = [row for row in map(measure, with_weights) if row is not None]
    if not rows:
        print("no LieRE run with exported weights in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 1
    print("| run | axes | top-1 (%) | rel. commutator init | trained | generator norm init | trained |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{100 * r['top1']:.1f}"
        print(
            f"| {r['run']} | {r['axes']} | {top1} | {r['commutator_init']:.3f} | {r['commutator_trained']:.3f}"
            f" | {r['norm_init']:.2f} | {r['norm_trained']:.2f} |"
        )
    if args.json:
        save_rows(args.json, rows, args.merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
