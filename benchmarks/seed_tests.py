"""Which arms differ over seeds? Pairwise tests on the per-seed top-1 of one or more sweep reports.

    python benchmarks/seed_tests.py docs/evidence/compass3d-all/report.json
    python benchmarks/seed_tests.py docs/evidence/compass3d-all docs/evidence/compass3d-5500 --all
    python benchmarks/seed_tests.py docs/evidence/compass3d-avgpool --eval "32x32x32" --json tests.json

A sweep's report (launch/compare.py) tests its own arms; this command tests arms across sweeps
that share a config (an arm run again with more seeds in another sweep, a probe beside the sweep it
probes), or at another evaluation than the training size (``--eval 32x32x32``, ``--eval "32x32x32
extent"``). Each argument is a report.json or the folder that holds one. An arm named in several
reports is kept from the first, or, with ``--all``, as ``label@folder`` each time. Prints every pair
with p < ``--shown`` (Welch's t-test and Mann-Whitney U, Holm-adjusted over all pairs, seeds for 80%
power; see liere/orchestration/seed_tests.py) and saves every pair with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere.orchestration.seed_tests import pairwise, render


def report_path(arg: str) -> Path:
    path = Path(arg)
    path = path / "report.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"{arg}: no report.json (a sweep's report, from launch/compare.py)")
    return path


def arm_seeds(paths: list[Path], key: str | None, keep_all: bool) -> dict[str, list[float]]:
    """label -> per-seed top-1 at ``key`` (default: each report's training size), over ``paths``."""
    seeds: dict[str, list[float]] = {}
    for path in paths:
        report = json.loads(path.read_text())
        wanted = key or report["train_size"]
        for arm in report["arms"]:
            if arm.get("top1_mean") is None:
                continue
            if wanted not in arm["evals"]:
                known = ", ".join(sorted(arm["evals"]))
                raise SystemExit(f"{path}: arm {arm['label']} has no evaluation {wanted!r} (it has: {known})")
            label = arm["label"]
            if label in seeds:
                if not keep_all:
                    continue
                label = f"{label}@{path.parent.name}"
            seeds[label] = arm["evals"][wanted]["seeds"]
    return seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="report.json files or the sweep folders that hold them")
    p.add_argument(
        "--eval", default=None, help="evaluation to test, e.g. '32x32x32 extent' (default: training size)"
    )
    p.add_argument("--all", action="store_true", help="keep an arm from every report, as label@folder")
    p.add_argument("--shown", type=float, default=0.05, help="print pairs with a p below this")
    p.add_argument("--json", default=None, help="save every pair's tests here")
    args = p.parse_args(argv)
    seeds = arm_seeds([report_path(r) for r in args.reports], args.eval, args.all)
    print(", ".join(f"{label} ({len(v)} seeds)" for label, v in seeds.items()))
    rows = pairwise(seeds)
    lines = render(rows, shown=args.shown, evaluation=args.eval or "the training size")
    print("\n".join(lines) if lines else "no pair of arms with two or more seeds each")
    if args.json:
        Path(args.json).write_text(json.dumps({"eval": args.eval, "seeds": seeds, "pairs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
