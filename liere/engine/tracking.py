"""MLflow tracking from rank 0, which never stops training.

If the tracking server cannot be reached (at start or mid-run), the tracker says so once and
keeps everything in ``<out_dir>/mlflow_offline/`` (params.jsonl, tags.jsonl, metrics.jsonl,
inputs.jsonl, artifacts/), so nothing is lost; ``replay`` uploads such a folder later.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"
# marks an experiment as model training (MLflow 3's experiment kinds; 3.17's UI still opens in the view
# the browser used last, so run links add ?workflowType=machine_learning: docs/training.md)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def use_experiment(mlflow, name: str) -> None:
    """Make ``name`` the active experiment (created if new) and mark it as model training."""
    experiment = mlflow.set_experiment(name)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            mlflow.set_experiment_tag(key, value)


def resolve_uri(configured: str | None) -> str:
    """Config, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())  # absolute: rank cwd may differ
    return uri


def _reachable(uri: str, timeout: float = 5.0) -> bool:
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """Rank 0's MLflow run (``active=False`` on other ranks: every call is a no-op)."""

    def __init__(
        self,
        active: bool,
        out_dir: Path,
        *,
        uri: str | None,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        system_metrics: bool = True,
        parent_run_id: str | None = None,
    ) -> None:
        self.active, self.offline_dir = active, Path(out_dir) / "mlflow_offline"
        self.run_id: str | None = run_id
        self.experiment_id: str | None = None
        self.online = False
        self._warned = False  # said once that the server is out of reach (again if it drops mid-run)
        self.uri = resolve_uri(uri)
        if not active:
            return
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if not _reachable(self.uri):
            self._go_offline(f"tracking server {self.uri} is unreachable")
            return
        try:
            import mlflow

            logging.getLogger("mlflow").setLevel(logging.WARNING)  # its import resets it to INFO
            mlflow.set_tracking_uri(self.uri)
            use_experiment(mlflow, experiment)
            parent = {"mlflow.parentRunId": parent_run_id} if parent_run_id and not run_id else None
            run = mlflow.start_run(
                run_id=run_id,
                run_name=None if run_id else run_name,
                log_system_metrics=system_metrics,
                tags=parent,  # a child of a sweep's parent run (launch/compare.py)
            )
            self.run_id, self.online, self._mlflow = run.info.run_id, True, mlflow
            self.experiment_id = run.info.experiment_id
        except Exception as err:  # any backend failure must not stop training
            self._go_offline(f"MLflow at {self.uri} failed: {err}")

    def _go_offline(self, reason: str) -> None:
        if self.online or not self._warned:
            print(
                f"[tracking] {reason}; training goes on, metrics are kept in {self.offline_dir}",
                file=sys.stderr,
                flush=True,
            )
            self._warned = True
        self.online = False
        self.offline_dir.mkdir(parents=True, exist_ok=True)

    def _call(self, what: str, online, offline) -> None:
        if not self.active:
            return
        if self.online:
            try:
                online()
                return
            except Exception as err:
                self._go_offline(f"MLflow {what} failed ({type(err).__name__}: {err})")
        offline()

    def _append(self, name: str, record: dict) -> None:
        with open(self.offline_dir / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        params = {k: str(v)[:6000] for k, v in params.items()}
        self._call(
            "log_params",
            lambda: self._mlflow.log_params(params),
            lambda: self._append("params.jsonl", params),
        )

    def set_tags(self, tags: dict[str, Any]) -> None:
        tags = {k: str(v) for k, v in tags.items()}
        self._call("set_tags", lambda: self._mlflow.set_tags(tags), lambda: self._append("tags.jsonl", tags))

    def run_page(self) -> str | None:
        """Where the MLflow UI shows this run: a URL on a tracking server, else the page's path (the
        ``workflowType`` parameter opens the model-training view, not MLflow 3's GenAI default)."""
        if not self.online or self.experiment_id is None:
            return None
        page = f"#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"
        return f"{self.uri.rstrip('/')}/{page}" if self.uri.startswith(("http://", "https://")) else page

    def set_description(self, text: str) -> None:
        """The run's description (the MLflow UI shows it on the run page)."""
        self.set_tags({"mlflow.note.content": text})

    def log_dataset(
        self, *, name: str, split: str, samples: int | None, digest: str, source: str, context: str
    ) -> None:
        """One split as an MLflow data set input (the runs table's Dataset column)."""
        record = {
            "name": name,
            "split": split,
            "samples": samples,
            "digest": digest,
            "source": source,
            "context": context,
        }

        def online() -> None:
            _log_input(self._mlflow, **record)

        self._call("log_input", online, lambda: self._append("inputs.jsonl", record))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        self._call(
            "log_metrics",
            lambda: self._mlflow.log_metrics(metrics, step=step),
            lambda: self._append("metrics.jsonl", {"step": step, "time": time.time(), **metrics}),
        )

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        path = Path(path)

        def offline() -> None:
            dest = self.offline_dir / "artifacts" / (subdir or "")
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / path.name)

        self._call("log_artifact", lambda: self._mlflow.log_artifact(str(path), subdir), offline)

    def finish(self, status: str = "FINISHED") -> None:
        if self.active and self.online:
            try:
                self._mlflow.end_run(status=status)
            except Exception as err:
                print(f"[tracking] could not close the MLflow run: {err}", file=sys.stderr)


def _log_input(mlflow, *, name: str, split: str, samples, digest: str, source: str, context: str) -> None:
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two equal local kinds
        warnings.simplefilter("ignore", UserWarning)
        origin = resolve_dataset_source(source)
    dataset = MetaDataset(origin, name=name, digest=digest)
    mlflow.log_input(dataset, context=context, tags={"split": split, "samples": str(samples)})


def host_tags(world_size: int) -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "world_size": str(world_size),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "launcher_cmd": " ".join(sys.argv),
    }


def replay(
    offline_dir: str | Path, uri: str | None = None, experiment: str = "default", run_id: str | None = None
) -> str:
    """Upload a run kept offline (params, tags, metrics, artifacts) to MLflow; returns its run id."""
    import mlflow

    offline_dir = Path(offline_dir)
    mlflow.set_tracking_uri(resolve_uri(uri))
    use_experiment(mlflow, experiment)

    def records(name: str) -> list[dict]:
        p = offline_dir / name
        return [json.loads(line) for line in p.read_text().splitlines() if line] if p.exists() else []

    with mlflow.start_run(run_id=run_id) as run:
        for rec in records("params.jsonl"):
            mlflow.log_params(rec)
        for rec in records("tags.jsonl"):
            mlflow.set_tags(rec)
        for rec in records("inputs.jsonl"):
            _log_input(mlflow, **rec)
        for rec in records("metrics.jsonl"):
            step, _ = rec.pop("step"), rec.pop("time", None)
            mlflow.log_metrics(rec, step=step)
        if (offline_dir / "artifacts").is_dir():
            mlflow.log_artifacts(str(offline_dir / "artifacts"))
        return run.info.run_id
