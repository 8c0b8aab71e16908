"""MLflow tracking from rank 0, which never stops training.

If the tracking server cannot be reached (at start or mid-run), the tracker says so once and
keeps everything in ``<out_dir>/mlflow_offline/`` (params.jsonl, tags.jsonl, metrics.jsonl,
inputs.jsonl, artifacts/), so nothing is lost. ``run.json`` there names the run (its id when it
was started online, uri, experiment, run name) and, once the run has ended, its final status.
At the end the tracker waits a few seconds for a lost server to record the status; ``replay``
(``python launch/replay.py FOLDER``) uploads the folder later into the same run, only what the
server lacks, and applies the status; a run started offline becomes a new named run.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import shlex
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
RUN_INFO = "run.json"  # in the offline folder: which run it belongs to, and how that run ended
END_WAIT_S = 5.0  # how long the end of a run waits for a lost server to record the status
REPO = Path(__file__).resolve().parents[2]


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


def _wait_reachable(uri: str, seconds: float) -> bool:
    """Whether the server answers within ``seconds`` (asked every half second)."""
    deadline = time.monotonic() + seconds
    while True:
        if _reachable(uri, timeout=max(0.2, min(1.0, deadline - time.monotonic()))):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


@contextlib.contextmanager
def _fail_fast():
    """MLflow HTTP calls with no retries and a short timeout (the end of a run must not hang)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def use_credentials(uri: str) -> bool:
    """Take the user and password of ``slurm/mlflow_server.sh``'s credentials file ($MLFLOW_CREDENTIALS,
    else runs/mlflow_credentials in the checkout) when it was written for ``uri`` and none are set
    (as slurm/site.sh does for the templates; this covers launch/submit.py's jobs, hand runs, replay)."""
    if os.environ.get("MLFLOW_TRACKING_PASSWORD") or not uri.startswith(("http://", "https://")):
        return False
    path = Path(os.environ.get("MLFLOW_CREDENTIALS") or REPO / "runs" / "mlflow_credentials")
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    user, password = values.get("MLFLOW_TRACKING_USERNAME"), values.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password) or values.get("MLFLOW_TRACKING_URI", "").rstrip("/") != uri.rstrip("/"):
        return False
    os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    return True


def read_run_info(offline_dir: str | Path) -> dict[str, Any]:
    """An offline folder's ``run.json`` ({} for a folder written before it existed)."""
    path = Path(offline_dir) / RUN_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_run_info(offline_dir: Path, info: dict[str, Any]) -> None:
    tmp = offline_dir / (RUN_INFO + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(offline_dir / RUN_INFO)  # whole or not at all


def replay_command(offline_dir: str | Path, uri: str) -> str:
    """The command line that uploads ``offline_dir`` (as run from the checkout)."""
    script = REPO / "launch" / "replay.py"
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path.cwd())
    args = [str(script), str(Path(offline_dir).resolve()), "--uri", uri]
    return "python " + " ".join(shlex.quote(a) for a in args)


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
        self.experiment, self.run_name, self.parent_run_id = experiment, run_name, parent_run_id
        self.online = False
        self.ended: str | None = None  # the status the run was ended with
        self._warned = False  # said once that the server is out of reach (again if it drops mid-run)
        self._told_replay = False  # the replay command was printed
        self._start_ms = int(time.time() * 1000)
        self._mlflow = None  # the mlflow module once a run is started online
        self.uri = resolve_uri(uri)
        if not active:
            return
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        use_credentials(self.uri)
        if not _reachable(self.uri):
            self._go_offline(f"tracking server {self.uri} is unreachable")
        else:
            self._start_online(system_metrics)
        atexit.register(self._end_at_exit)  # after mlflow's own (which would say FINISHED): runs first

    def _start_online(self, system_metrics: bool) -> None:
        try:
            import mlflow

            logging.getLogger("mlflow").setLevel(logging.WARNING)  # its import resets it to INFO
            mlflow.set_tracking_uri(self.uri)
            use_experiment(mlflow, self.experiment)
            resumed = self.run_id
            parent = (
                {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id and not resumed else None
            )
            run = mlflow.start_run(
                run_id=resumed,
                run_name=None if resumed else self.run_name,
                log_system_metrics=system_metrics,
                tags=parent,  # a child of a sweep's parent run (launch/compare.py)
            )
            self.run_id, self.online, self._mlflow = run.info.run_id, True, mlflow
            self.experiment_id = run.info.experiment_id
        except Exception as err:  # any backend failure must not stop training
            self._go_offline(f"MLflow at {self.uri} failed: {err}")
            return
        info = read_run_info(self.offline_dir)
        if info and not info.get("run_id"):  # an earlier attempt of this run started offline: this is its run
            _write_run_info(self.offline_dir, {**info, "run_id": self.run_id})

    def _run_info(self, **extra: Any) -> dict[str, Any]:
        old = read_run_info(self.offline_dir)
        return {
            **old,
            "run_id": self.run_id,
            "uri": self.uri,
            "experiment": self.experiment,
            "experiment_id": self.experiment_id,
            "run_name": self.run_name,
            "parent_run_id": self.parent_run_id,
            "start_time": old.get("start_time", self._start_ms),  # the first attempt's
            **extra,
        }

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
        info = read_run_info(self.offline_dir)
        if not info or (self.run_id and info.get("run_id") != self.run_id):
            _write_run_info(self.offline_dir, self._run_info())

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

    def replay_hint(self) -> str | None:
        """What to run once the server is back, when something is kept offline (else None)."""
        if not self.active or not self.offline_dir.is_dir():
            return None
        self._told_replay = True
        return replay_command(self.offline_dir, self.uri)

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
            self._mlflow.tracking.MlflowClient().log_inputs(self.run_id, [_dataset_input(record)])

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

    def finish(self, status: str = "FINISHED", wait_s: float = END_WAIT_S) -> bool:
        """End the run with ``status`` (FINISHED, FAILED, KILLED); True when the server recorded it.

        Offline, it waits up to ``wait_s`` for the server; if the server stays away, the status goes
        into the offline folder's ``run.json``, and ``replay`` applies it. Only the first call counts.
        """
        if not self.active or self.ended:
            return False
        self.ended, end_ms = status, int(time.time() * 1000)
        recorded = self.online and self._end_fluent(status, fail_fast=False)
        if not recorded and self.run_id and _wait_reachable(self.uri, wait_s):
            recorded = self._end_on_server(status, end_ms)
        if self._mlflow is not None and self._mlflow.active_run():  # leave nothing for mlflow's atexit
            with _fail_fast(), contextlib.suppress(Exception):
                self._mlflow.end_run(status=status)
        if recorded and not self.offline_dir.is_dir():
            return True
        self.offline_dir.mkdir(parents=True, exist_ok=True)
        end = {"status": status, "end_time": end_ms, "status_recorded": recorded}
        _write_run_info(self.offline_dir, self._run_info(**end))
        said = "recorded on the server" if recorded else f"kept in {self.offline_dir / RUN_INFO}"
        hint = "" if self._told_replay else f"; to upload what is kept offline: {self.replay_hint()}"
        print(
            f"[tracking] MLflow run {self.run_id or '(started offline)'} ended {status}, {said}{hint}",
            file=sys.stderr,
        )
        return recorded

    def _end_fluent(self, status: str, fail_fast: bool) -> bool:
        try:
            with _fail_fast() if fail_fast else contextlib.nullcontext():
                self._mlflow.end_run(status=status)
            return True
        except Exception as err:
            self._go_offline(f"could not close the MLflow run ({type(err).__name__}: {err})")
            return False

    def _end_on_server(self, status: str, end_ms: int) -> bool:
        """The server is back: the run's status (the metrics kept offline wait for ``replay``)."""
        if self._mlflow is not None and self._mlflow.active_run():
            return self._end_fluent(status, fail_fast=True)
        try:
            from mlflow.tracking import MlflowClient

            with _fail_fast():
                MlflowClient(self.uri).set_terminated(self.run_id, status, end_time=end_ms)
            return True
        except Exception as err:
            print(f"[tracking] could not close the MLflow run: {err}", file=sys.stderr)
            return False

    def _end_at_exit(self) -> None:
        """The process ends without ``finish`` (an exit or interrupt outside the training loop)."""
        if not self.ended:
            self.finish("KILLED", wait_s=1.0)


def _dataset_input(record: dict[str, Any]):
    """An offline ``inputs.jsonl`` record as MLflow's data set input."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two equal local kinds
        warnings.simplefilter("ignore", UserWarning)
        origin = resolve_dataset_source(record["source"])
    dataset = MetaDataset(origin, name=record["name"], digest=record["digest"])
    tags = {
        "mlflow.data.context": record["context"],
        "split": record["split"],
        "samples": str(record["samples"]),
    }
    return DatasetInput(dataset._to_mlflow_entity(), [InputTag(k, v) for k, v in tags.items()])


def host_tags(world_size: int) -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "world_size": str(world_size),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "launcher_cmd": " ".join(sys.argv),
    }


# ---------------------------------------------------------------------------------------------
# replay: an offline folder into its run
# ---------------------------------------------------------------------------------------------
def _records(offline_dir: Path, name: str) -> list[dict]:
    path = offline_dir / name
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    for key, value in EXPERIMENT_KIND.items():
        if experiment is None or experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)
    return experiment_id


def _target_run(client, offline_dir: Path, info: dict[str, Any], run_id: str | None, experiment: str | None):
    """The run to merge into (the given one, else run.json's), or a new run named as the folder says."""
    from mlflow.exceptions import MlflowException

    wanted = run_id or info.get("run_id") or info.get("replayed_into")
    if wanted:
        try:
            return client.get_run(wanted), False
        except MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code):
                raise
            print(f"[replay] run {wanted} is not on {client.tracking_uri}: a new run gets the records")
    experiment_id = _experiment_id(client, experiment or info.get("experiment") or "default")
    parent = info.get("parent_run_id")
    run = client.create_run(
        experiment_id,
        start_time=info.get("start_time"),
        run_name=info.get("run_name"),
        tags={"mlflow.parentRunId": parent} if parent else None,
    )
    # remember where the records went: a second replay merges instead of making another run
    _write_run_info(offline_dir, {**info, "replayed_into": run.info.run_id})
    return run, True


def _replay_params(client, run, records: list[dict]) -> int:
    """Params the run lacks; one it holds with another value is kept, with a warning (MLflow
    refuses to change a param)."""
    from mlflow.entities import Param

    have, new = dict(run.data.params), {}
    for record in records:
        for key, value in record.items():
            if key in have and have[key] != value:
                print(f"[replay] param {key}: the run has {have[key]!r}, kept (offline: {value!r})")
            elif key not in have:
                new[key] = have[key] = value
    params = [Param(k, v) for k, v in new.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return len(params)


def _point(step: int, value: float) -> tuple:
    return (step, "nan" if math.isnan(value) else value)


def _replay_metrics(client, run_id: str, records: list[dict]) -> tuple[int, int]:
    """Metric points the run lacks (the same key, step and value count as there); (logged, skipped)."""
    from mlflow.entities import Metric

    have: dict[str, set] = {}
    todo, skipped = [], 0
    for record in records:
        step, stamp = int(record.pop("step")), record.pop("time", None)
        ms = int(stamp * 1000) if stamp is not None else int(time.time() * 1000)
        for key, value in record.items():
            if key not in have:
                have[key] = {_point(m.step, m.value) for m in client.get_metric_history(run_id, key)}
            point = _point(step, float(value))
            if point in have[key]:
                skipped += 1
                continue
            have[key].add(point)
            todo.append(Metric(key, float(value), ms, step))
    for i in range(0, len(todo), 1000):
        client.log_batch(run_id, metrics=todo[i : i + 1000])
    return len(todo), skipped


def _artifact_sizes(client, run_id: str, path: str | None = None) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            sizes.update(_artifact_sizes(client, run_id, item.path))
        else:
            sizes[item.path] = item.file_size
    return sizes


def _replay_artifacts(client, run_id: str, folder: Path) -> int:
    """Files the run lacks (or holds with another size)."""
    if not folder.is_dir():
        return 0
    have, count = _artifact_sizes(client, run_id), 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if have.get(rel.as_posix()) != path.stat().st_size:
            client.log_artifact(run_id, str(path), None if rel.parent == Path(".") else rel.parent.as_posix())
            count += 1
    return count


def _replay_inputs(client, run, records: list[dict]) -> None:
    def key(name, digest, context):
        return (name, digest, context)

    have = {
        key(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}.get("mlflow.data.context"))
        for i in (run.inputs.dataset_inputs if run.inputs else [])
    }
    new = [r for r in records if key(r["name"], r["digest"], r["context"]) not in have]
    if new:
        client.log_inputs(run.info.run_id, [_dataset_input(r) for r in new])


def replay(
    offline_dir: str | Path, uri: str | None = None, experiment: str | None = None, run_id: str | None = None
) -> str:
    """Upload a run kept offline to MLflow; returns the run id.

    Merges into the run ``run.json`` names (or ``run_id``), logging only what the server lacks: params
    it does not hold, metric points it does not have, tags, data set inputs and artifacts; then sets the
    status the run ended with. A new run (named, with its params and tags, in ``experiment`` or the
    folder's) only when the folder has no run id (the run started offline) or the server does not know
    it. The server is ``uri``, else the folder's, else $MLFLOW_TRACKING_URI. Safe to repeat.
    """
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    offline_dir = Path(offline_dir)
    if not (offline_dir / RUN_INFO).exists() and (offline_dir / "mlflow_offline").is_dir():
        offline_dir = offline_dir / "mlflow_offline"  # the run's out_dir
    if not offline_dir.is_dir():
        raise FileNotFoundError(f"no offline folder at {offline_dir}")
    info = read_run_info(offline_dir)
    uri = resolve_uri(uri or info.get("uri"))
    use_credentials(uri)
    client = MlflowClient(uri)
    run, created = _target_run(client, offline_dir, info, run_id, experiment)
    rid = run.info.run_id
    params = _replay_params(client, run, _records(offline_dir, "params.jsonl"))
    tags = {k: v for record in _records(offline_dir, "tags.jsonl") for k, v in record.items()}
    if tags:
        client.log_batch(rid, tags=[RunTag(k, v) for k, v in tags.items()])
    _replay_inputs(client, run, _records(offline_dir, "inputs.jsonl"))
    logged, skipped = _replay_metrics(client, rid, _records(offline_dir, "metrics.jsonl"))
    artifacts = _replay_artifacts(client, rid, offline_dir / "artifacts")
    status = info.get("status")
    if status:
        client.set_terminated(rid, status, end_time=info.get("end_time"))
    print(
        f"[replay] {'new run' if created else 'run'} {rid} at {uri}: {params} params, {logged} metric "
        f"points ({skipped} already there), {artifacts} artifacts; status "
        + (status or f"left {client.get_run(rid).info.status} (the folder records no end)")
    )
    return rid
