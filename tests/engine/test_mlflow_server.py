"""Training against a real MLflow tracking server (started here, on loopback)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _mlflow_store import sqlite_store

from ._train import run_train, summary, train_env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_command() -> str:
    """The ``mlflow`` command beside this interpreter (skips, or fails under CI, without one)."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if mlflow_bin.exists():
        return str(mlflow_bin)
    if shutil.which("mlflow") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the mlflow command is not installed (make test installs the train extra)")
        pytest.skip("the mlflow command is not installed")
    return shutil.which("mlflow")


def wait_healthy(uri: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server did not come up: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)


class MlflowServer:
    """``mlflow server`` on loopback over a SQLite store in ``root``: ``kill()`` ends it at once (its
    whole process group, as a crash would), ``start()`` brings it back on the same store and port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = Path(root), _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = sqlite_store(self.root / "server.db", default_artifacts="mlflow-artifacts:/0")

    def start(self) -> str:
        cmd = [
            mlflow_command(), "server", "--backend-store-uri", self.store,
            "--artifacts-destination", str(self.root / "art"), "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
        )
        wait_healthy(self.uri, self.proc)
        return self.uri

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    yield server.start()
    server.kill(signal.SIGTERM)


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


REPO = Path(__file__).resolve().parents[2]


def _server_script_env(tmp_path: Path, port: int) -> dict[str, str]:
    drop = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {
        "PYTHON": sys.executable,
        "MLFLOW_PORT": str(port),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_STORE": str(tmp_path / "store"),
        "MLFLOW_URI_FILE": str(tmp_path / "mlflow_server.uri"),
        "MLFLOW_CREDENTIALS": str(tmp_path / "credentials"),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def test_the_server_script_binds_the_node_and_asks_for_credentials(tmp_path, monkeypatch):
    """slurm/mlflow_server.sh by hand: credentials made on first start (0600, not in the log), a request
    without them refused (401), a tracker given them (as slurm/site.sh would) logs a run."""
    from mlflow.tracking import MlflowClient

    from liere.engine.tracking import Tracker

    mlflow_command()
    port, log = _free_port(), tmp_path / "server.log"
    env, creds, uri_file = (
        _server_script_env(tmp_path, port),
        tmp_path / "credentials",
        tmp_path / "mlflow_server.uri",
    )
    with open(log, "w") as out:
        script = subprocess.Popen(
            ["bash", "slurm/mlflow_server.sh"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not uri_file.exists():
            assert script.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        uri = uri_file.read_text().strip()
        assert uri == f"http://127.0.0.1:{port}"
        assert creds.stat().st_mode & 0o777 == 0o600
        values = dict(line.split("=", 1) for line in creds.read_text().splitlines())
        password = values["MLFLOW_TRACKING_PASSWORD"]
        assert values["MLFLOW_TRACKING_USERNAME"] == "admin" and len(password) >= 24
        assert values["MLFLOW_TRACKING_URI"] == uri  # what slurm/site.sh matches before handing them on
        text = log.read_text()
        assert f"password in {creds}" in text and password not in text
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert refused.value.code == 401
        assert "127.0.0.1:" + str(port) in _listening(port)  # the node's address, not 0.0.0.0

        monkeypatch.setenv("MLFLOW_CREDENTIALS", str(creds))  # the tracker takes them for that address
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        tracker = Tracker(
            True, tmp_path / "out", uri=uri, experiment="auth", run_name="r", system_metrics=False
        )
        assert tracker.online, "the tracker did not get in"
        tracker.log_params({"a": 1})
        tracker.log_metrics({"train/loss": 0.5}, step=1)
        assert tracker.finish("FINISHED")
        run = MlflowClient(uri).get_run(tracker.run_id)
        assert run.info.status == "FINISHED" and run.data.params == {"a": "1"}
        assert run.data.metrics == {"train/loss": 0.5}
    finally:
        os.killpg(script.pid, signal.SIGTERM)
        script.wait(timeout=60)
    assert not uri_file.exists()  # withdrawn with the server


def _listening(port: int) -> str:
    """The local addresses listening on ``port`` (from /proc/net/tcp: address:port, state 0A)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)) + f":{port}")
    return " ".join(found)


def test_the_server_script_refuses_credentials_others_can_read(tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text("MLFLOW_TRACKING_USERNAME=admin\nMLFLOW_TRACKING_PASSWORD=x\n")
    creds.chmod(0o644)
    proc = subprocess.run(
        ["bash", "slurm/mlflow_server.sh"], cwd=REPO, env=_server_script_env(tmp_path, _free_port()),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and f"chmod 600 {creds}" in proc.stderr, proc.stderr
