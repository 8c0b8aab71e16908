"""A sweep's results without its weights (``launch/compare.py --export DIR``): what ``docs/evidence``
keeps, and what resumes the sweep on another machine (copy the folder back to runs/compare/NAME and
run the same command: the exported runs count as finished).

Kept per finished run: ``summary.json``, ``config.yaml``, the LieRE sparsity report per layer
(``sparsity.json``/``.md``, where the run wrote one), ``history.jsonl`` (the training curves;
for a run trained before the engine kept one, rebuilt from its MLflow run when the store still has
it) and the evaluations ``compare_eval/`` (the sweep's) and ``eval_positions-*/``
(``launch/evaluate.py --positions``); and every file at the sweep folder's top level (the report,
its plot, ``sweep.json``, measurements saved beside them). Left out: weights, checkpoints,
train.log, offline MLflow folders.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from liere.engine.metrics import HISTORY

RUN_FILES = ("summary.json", "config.yaml", HISTORY, "sparsity.json", "sparsity.md")
RUN_FOLDERS = ("compare_eval", "eval_positions-*")  # glob patterns


def export_sweep(out: Path, dest: Path, runs: list, uri: str | None) -> list[str]:
    """Copy the finished ``runs`` of the sweep folder ``out`` into ``dest``; returns the names copied.
    ``uri``: the MLflow store to rebuild a missing history from (None: none is rebuilt)."""
    out, dest = out.resolve(), dest.resolve()
    if dest == out:
        raise ValueError(f"--export {dest}: that is the sweep folder itself")
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(out.iterdir()):
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    copied = []
    for run in runs:
        if not run.finished:
            continue
        target = dest / run.out_dir.name
        target.mkdir(exist_ok=True)
        for name in RUN_FILES:
            if (run.out_dir / name).is_file():
                shutil.copy2(run.out_dir / name, target / name)
        for folder in (f for pattern in RUN_FOLDERS for f in sorted(run.out_dir.glob(pattern))):
            if folder.is_dir():
                shutil.copytree(folder, target / folder.name, dirs_exist_ok=True)
        if not (target / HISTORY).is_file():
            records = history_from_mlflow(run.out_dir, uri) if uri else None
            if records:
                (target / HISTORY).write_text("".join(json.dumps(r) + "\n" for r in records))
            else:
                print(f"[export] {run.name}: no {HISTORY} and none in the MLflow store", file=sys.stderr)
        copied.append(run.name)
    return copied


def history_from_mlflow(run_dir: Path, uri: str) -> list[dict[str, Any]] | None:
    """The run's logged training metrics (``train/*``, ``data/*``) as history records, from the MLflow
    run its summary names; None when that run is not in the store at ``uri``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "summary.json").read_text()).get("mlflow_run_id")
    if not run_id:
        return None
    client = MlflowClient(uri)
    try:
        keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(("train/", "data/"))]
    except MlflowException:
        return None
    by_step: dict[int, dict[str, Any]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(int(m.step), {"step": int(m.step)})[key] = m.value
    for record in by_step.values():
        if "train/epoch" in record:
            record["epoch"] = int(record["train/epoch"])
    return [by_step[s] for s in sorted(by_step)] or None
