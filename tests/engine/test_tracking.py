"""MLflow outages end cleanly: the run's end is recorded (on the server, or in the offline folder's
run.json), and ``replay`` merges the offline records into the same run, each point once.

Against real ``mlflow server`` processes on loopback, killed and restarted on the same store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .test_mlflow_server import MlflowServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def quick_http(monkeypatch):
    """No retries against a dead server (the tracker's own defaults: 2 retries, 20 s)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.kill()


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _log_steps(tracker, steps) -> None:
    for step in steps:
        tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 0.1}, step)


@pytest.mark.slow
def test_a_server_killed_mid_run_merges_back_into_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from liere.engine.tracking import Tracker, replay, replay_command

    server = MlflowServer(tmp_path / "store")
    uri = server.start()
    out = tmp_path / "run"
    (tmp_path / "config.yaml").write_text("a: 1\n")
    (tmp_path / "summary.json").write_text("{}\n")
    tracker = Tracker(True, out, uri=uri, experiment="outage", run_name="r-online", system_metrics=False)
    assert tracker.online
    tracker.log_params({"model.name": "vit", "optim.lr": 0.1})
    tracker.set_tags({"host": "here"})
    _log_steps(tracker, range(1, 4))
    tracker.log_artifact(tmp_path / "config.yaml")

    server.kill()  # mid-run, as a crash would
    _log_steps(tracker, range(4, 8))
    assert not tracker.online
    tracker.log_params({"model.parameters": 123})
    tracker.log_dataset(
        name="digits", split="val", samples=10, digest="abc", source=str(tmp_path), context="eval"
    )
    tracker.log_artifact(tmp_path / "summary.json")
    assert not tracker.finish("FINISHED", wait_s=1.0)

    offline = out / "mlflow_offline"
    info = json.loads((offline / "run.json").read_text())
    assert info["run_id"] == tracker.run_id and info["uri"] == uri
    assert (info["experiment"], info["run_name"]) == ("outage", "r-online")
    assert info["status"] == "FINISHED" and info["status_recorded"] is False
    assert tracker.replay_hint() == replay_command(offline, uri)
    assert f"launch/replay.py {offline.resolve()} --uri {uri}" in tracker.replay_hint()

    server.start()  # the same store, the same port
    client = MlflowClient(uri)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # what replay is there to end
    for _ in range(2):  # a second replay adds nothing
        assert replay(offline) == tracker.run_id  # the uri and the run from run.json
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == info["end_time"]
    assert _history(client, tracker.run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 8)]
    assert _history(client, tracker.run_id, "train/lr") == [(s, 0.1) for s in range(1, 8)]
    assert run.data.params == {"model.name": "vit", "optim.lr": "0.1", "model.parameters": "123"}
    assert run.data.tags["host"] == "here" and run.info.run_name == "r-online"
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"digits"}
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"config.yaml", "summary.json"}
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run
    server.kill()


@pytest.mark.slow
def test_a_run_started_offline_replays_as_a_new_named_run(tmp_path, server):
    from mlflow.tracking import MlflowClient

    from liere.engine.tracking import Tracker, replay

    out = tmp_path / "run"
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    tracker = Tracker(
        True, out, uri=dead, experiment="outage-offline", run_name="r-offline", system_metrics=False
    )
    assert not tracker.online and tracker.run_id is None
    tracker.log_params({"model.name": "vit"})
    _log_steps(tracker, range(1, 4))
    tracker.finish("FAILED", wait_s=0.5)
    info = json.loads((out / "mlflow_offline" / "run.json").read_text())
    assert info["run_id"] is None and info["status"] == "FAILED" and info["uri"] == dead

    run_id = replay(out, uri=server.uri)  # the run's out_dir does too
    assert replay(out, uri=server.uri) == run_id  # the folder remembers where it went: no second run
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "r-offline" and run.info.status == "FAILED"
    assert run.data.params == {"model.name": "vit"}
    assert _history(client, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 4)]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "outage-offline"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_a_process_that_exits_without_ending_its_run_leaves_it_killed(tmp_path, server):
    """An exit outside the training loop (a signal turned into SystemExit, an interrupt): KILLED, not
    the FINISHED that mlflow's own exit hook would record."""
    from mlflow.tracking import MlflowClient

    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from liere.engine.tracking import Tracker
        t = Tracker(True, {str(tmp_path / "run")!r}, uri={server.uri!r}, experiment="exit",
                    run_name="r", system_metrics=False)
        assert t.online
        t.log_metrics({{"x": 1.0}}, 1)
        print("RUN_ID", t.run_id, flush=True)
        sys.exit(143)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr[-2000:]
    run_id = proc.stdout.split("RUN_ID ")[1].split()[0]
    assert MlflowClient(server.uri).get_run(run_id).info.status == "KILLED"


def test_credentials_go_only_to_the_server_they_were_written_for(tmp_path, monkeypatch):
    import os

    from liere.engine.tracking import use_credentials

    creds = tmp_path / "credentials"
    uri = "http://node:5000"
    creds.write_text(
        f"MLFLOW_TRACKING_USERNAME=admin\nMLFLOW_TRACKING_PASSWORD=s3cret\nMLFLOW_TRACKING_URI={uri}\n"
    )
    monkeypatch.setenv("MLFLOW_CREDENTIALS", str(creds))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    assert not use_credentials("http://elsewhere:5000") and "MLFLOW_TRACKING_PASSWORD" not in os.environ
    assert use_credentials(uri + "/") and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"


def test_replay_of_a_missing_folder_is_a_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch/replay.py", str(tmp_path / "nothing")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        proc.returncode == 2
        and "error: no offline folder at" in proc.stderr
        and "Traceback" not in proc.stderr
    )
