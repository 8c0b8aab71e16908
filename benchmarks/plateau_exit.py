"""When did each run of a sweep leave the chance plateau? Read from its MLflow training-loss history.

    python benchmarks/plateau_exit.py runs/compare/compass3d-rev2
    python benchmarks/plateau_exit.py runs/compare/compass2d/liere8-s0 runs/compare/compass2d/string-s1 --below 0.5

A sweep's runs evaluate only at the end (``train.eval_every: 0``), so the escape step of
``benchmarks/escape_time.py`` (validation top-1 past 50%) is not there; the training loss is, every
``train.log_every`` steps. For each run (a run directory, or a sweep directory: every run in it) this
prints the first logged step at which the loss is below ``--below`` x ln(classes) (chance is ln C;
0.9 marks leaving the plateau, 0.5 a run well on its way) and stays below it for ``--hold`` logged
points, the last logged loss, and the top-1 at the training size from ``summary.json``. The MLflow
store is ``--tracking-uri``, else $MLFLOW_TRACKING_URI, else ./mlflow.db (as the engine resolves it);
the run is the one ``summary.json`` names. ``--json FILE`` saves the rows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere.models.io import read_spec


def run_dirs(paths: list[Path]) -> list[Path]:
    """Each path as a run (it has summary.json) or as a sweep folder of runs."""
    out: list[Path] = []
    for p in paths:
        if (p / "summary.json").is_file():
            out.append(p)
        elif p.is_dir() and (found := sorted(d.parent for d in p.glob("*/summary.json"))):
            out.extend(found)
        else:
            raise SystemExit(f"{p}: neither a finished run (summary.json) nor a folder of finished runs")
    return out


def first_exit(history: list[tuple[int, float]], level: float, hold: int) -> int | None:
    """The first step whose loss and the next ``hold - 1`` logged losses are all below ``level``."""
    for i, (step, _) in enumerate(history):
        window = history[i : i + hold]
        if len(window) == hold and all(v < level for _, v in window):
            return step
    return None


def run_classes(run: Path, classes: int | None) -> int:
    """The run's class count: ``classes`` when given, else from the spec saved with its weights."""
    if classes is not None:
        return classes
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise SystemExit(
            f"{weights}: no weights kept (a run copied from docs/evidence has none), so the class count "
            "is unknown: pass --classes (6 for compass3d, 8 for compass2d, 10 for digits)"
        )
    return int(read_spec(weights)["kwargs"]["num_classes"])


def loss_exit_row(client, uri: str, run: Path, args: argparse.Namespace) -> dict | None:
    """One run's plateau exit, read from the training-loss history of the MLflow run its summary names;
    None (said on stderr) when that run is not in this store."""
    from mlflow.exceptions import MlflowException

    summary = json.loads((run / "summary.json").read_text())
    run_id = summary.get("mlflow_run_id")
    if not run_id:
        raise SystemExit(f"{run}/summary.json names no MLflow run (tracking was off)")
    try:
        client.get_run(run_id)
    except MlflowException:
        print(
            f"{run}: left out: its MLflow run {run_id} is not in the store {uri} (copied in from another machine?)",
            file=sys.stderr,
        )
        return None
    classes = run_classes(run, args.classes)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    if not history:
        raise SystemExit(f"{run}: MLflow run {run_id} has no train/loss history")
    level = args.below * math.log(classes)
    return {
        "run": run.name,
        "exit_step": first_exit(history, level, args.hold),
        "level": level,
        "last_step": history[-1][0],
        "last_loss": history[-1][1],
        "top1": summary["sweep"][0]["top1"] if summary.get("sweep") else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="run directories or sweep folders")
    p.add_argument("--below", type=float, default=0.9, help="threshold as a fraction of ln(classes)")
    p.add_argument("--hold", type=int, default=3, help="logged points the loss must stay below it")
    p.add_argument("--classes", type=int, default=None, help="class count (default: from each run's weights)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--json", type=Path, default=None, help="save the rows here")
    args = p.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from liere.engine.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    client = MlflowClient(uri)
    rows = [row for run in run_dirs(args.paths) if (row := loss_exit_row(client, uri, run, args))]
    if not rows:
        raise SystemExit(f"none of these runs is in the MLflow store {uri}")
    print(f"| run | first step below {args.below} ln C (held {args.hold} logs) | last loss | top-1 (%) |")
    print("|---|---|---|---|")
    for r in rows:
        step = "never" if r["exit_step"] is None else str(r["exit_step"])
        top1 = "-" if r["top1"] is None else f"{100 * r['top1']:.1f}"
        print(f"| {r['run']} | {step} | {r['last_loss']:.3f} (step {r['last_step']}) | {top1} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
