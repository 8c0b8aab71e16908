"""Training against a real MLflow tracking server (started here, on loopback)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ._train import run_train, summary, train_env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if not mlflow_bin.exists() and shutil.which("mlflow") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the mlflow command is not installed (make test installs the train extra)")
        pytest.skip("the mlflow command is not installed")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(mlflow_bin if mlflow_bin.exists() else shutil.which("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not come up: {server.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)


def test_training_logs_to_a_tracking_server(tmp_path, digits_root, mlflow_server):
    from mlflow.tracking import MlflowClient

    env = train_env(tmp_path, MLFLOW_TRACKING_URI=mlflow_server)
    proc, out = run_train(tmp_path, digits_root, ["train.max_steps=10"], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unreachable" not in proc.stderr
    run_id = summary(out)["mlflow_run_id"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert (
        run.info.status == "FINISHED" and "train/loss" in run.data.metrics and "val/top1" in run.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "model.safetensors" in artifacts and "eval_resolution.png" in artifacts
    assert not (out / "mlflow_offline").exists()
