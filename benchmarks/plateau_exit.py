"""When did each run of a sweep leave the chance plateau? Read from its training-loss history.

    python benchmarks/plateau_exit.py runs/compare/compass3d-rev2
    python benchmarks/plateau_exit.py runs/compare/compass2d/liere8-s0 runs/compare/compass2d/string-s1 --below 0.5
    python benchmarks/plateau_exit.py docs/evidence/compass3d-5500 --classes 6 --json plateau_exit.json --merge

A sweep's runs evaluate only at the end (``train.eval_every: 0``), so the escape step of
``benchmarks/escape_time.py`` (validation top-1 past 50%) is not there; the training loss is, every
``train.log_every`` steps. For each run (a run directory, or a sweep directory: every run in it) this
prints the first logged step at which the loss is below ``--below`` x ln(classes) (chance is ln C;
0.9 marks leaving the plateau, 0.5 a run well on its way) and stays below it for ``--hold`` logged
points, the last logged loss, and the top-1 at the training size from ``summary.json``. The history is
the run's own ``history.jsonl`` (kept by the engine and by ``launch/compare.py --export``); for a run
without one, the MLflow run its ``summary.json`` names in the store ``--tracking-uri``, else
$MLFLOW_TRACKING_URI, else ./mlflow.db (as the engine resolves it). ``--json FILE`` saves the rows;
with ``--merge`` the rows already in FILE for runs not measured now are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere.engine.metrics import HISTORY, read_history
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


def loss_history(run: Path, store) -> list[tuple[int, float]] | None:
    """(step, training loss) of a run: its history.jsonl, else its MLflow run in ``store`` (a callable
    giving (client, uri)); None (said on stderr) when neither has it."""
    if (run / HISTORY).is_file():
        history = [(r["step"], r["train/loss"]) for r in read_history(run / HISTORY) if "train/loss" in r]
        if not history:
            raise SystemExit(f"{run / HISTORY}: no train/loss record")
        return history
    from mlflow.exceptions import MlflowException

    summary = json.loads((run / "summary.json").read_text())
    run_id = summary.get("mlflow_run_id")
    if not run_id:
        raise SystemExit(f"{run}: no {HISTORY}, and summary.json names no MLflow run (tracking was off)")
    client, uri = store()
    try:
        client.get_run(run_id)
    except MlflowException:
        print(
            f"{run}: left out: no {HISTORY}, and its MLflow run {run_id} is not in the store {uri} "
            "(copied in from another machine?)",
            file=sys.stderr,
        )
        return None
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    if not history:
        raise SystemExit(f"{run}: MLflow run {run_id} has no train/loss history")
    return history


def loss_exit_row(run: Path, store, args: argparse.Namespace) -> dict | None:
    """One run's plateau exit; None when its loss history is nowhere to be read."""
    history = loss_history(run, store)
    if history is None:
        return None
    summary = json.loads((run / "summary.json").read_text())
    level = args.below * math.log(run_classes(run, args.classes))
    return {
        "run": run.name,
        "exit_step": first_exit(history, level, args.hold),
        "level": level,
        "last_step": history[-1][0],
        "last_loss": history[-1][1],
        "top1": summary["sweep"][0]["top1"] if summary.get("sweep") else None,
    }


def save_rows(path: Path, rows: list[dict], merge: bool) -> None:
    """Write ``rows`` to ``path`` as JSON; with ``merge``, the rows already there whose run is not
    among ``rows`` are kept (one file for a sweep measured over several sessions), ordered by run."""
    if merge and path.is_file():
        measured = {r["run"] for r in rows}
        earlier = [r for r in json.loads(path.read_text()) if r["run"] not in measured]
        rows = sorted([*earlier, *rows], key=lambda r: r["run"])
    path.write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="run directories or sweep folders")
    p.add_argument("--below", type=float, default=0.9, help="threshold as a fraction of ln(classes)")
    p.add_argument("--hold", type=int, default=3, help="logged points the loss must stay below it")
    p.add_argument("--classes", type=int, default=None, help="class count (default: from each run's weights)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--json", type=Path, default=None, help="save the rows here")
    p.add_argument("--merge", action="store_true", help="with --json: keep the file's rows of other runs")
    args = p.parse_args(argv)

    opened: list = []

    def store():
        """The MLflow client and uri, opened once, only for a run without history.jsonl."""
        if not opened:
            from mlflow.tracking import MlflowClient

            from liere.engine.tracking import resolve_uri

            uri = resolve_uri(args.tracking_uri)
            opened.extend([MlflowClient(uri), uri])
        return opened[0], opened[1]

    rows = [row for run in run_dirs(args.paths) if (row := loss_exit_row(run, store, args))]
    if not rows:
        raise SystemExit(f"no loss history for any of these runs (no {HISTORY}, not in the MLflow store)")
    print(f"| run | first step below {args.below} ln C (held {args.hold} logs) | last loss | top-1 (%) |")
    print("|---|---|---|---|")
    for r in rows:
        step = "never" if r["exit_step"] is None else str(r["exit_step"])
        top1 = "-" if r["top1"] is None else f"{100 * r['top1']:.1f}"
        print(f"| {r['run']} | {step} | {r['last_loss']:.3f} (step {r['last_step']}) | {top1} |")
    if args.json:
        save_rows(args.json, rows, args.merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
