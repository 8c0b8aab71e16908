"""Cluster launch on a real two-node Slurm cluster (conftest.py): the sbatch template, launch/submit.py,
requeue with resume into the same MLflow run, and a crashing rank that fails the job promptly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _mlflow_store import sqlite_store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "slurm/imagenet_liere.sh"
SUBMIT = "launch/submit.py"
TWO_NODES = ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1"]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def fast(digits_root: Path, out_dir: Path, steps: int = 30, log_every: int = 5) -> list[str]:
    """A tiny 2-rank run of configs/demo.yaml: 16 px digits, batch 16, evaluated once at 16 px."""
    return [
        f"data.root={digits_root}",
        f"train.out_dir={out_dir}",
        "data.batch_size=16",
        "data.workers=1",
        f"train.max_steps={steps}",
        f"train.log_every={log_every}",
        "optim.warmup_epochs=0.1",
        "train.eval_every=0",
        "train.dist_timeout_s=30",
        "eval.sizes=[16]",
        "tracking.system_metrics=false",
    ]


def job_env(tmp_path: Path) -> dict[str, str]:
    drop = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SBATCH_")}
    env.update(
        MLFLOW_TRACKING_URI=sqlite_store(tmp_path / "mlflow.db"),
        MLFLOW_DISABLE_TELEMETRY="true",
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        PYTHON=sys.executable,  # the jobs run this test's interpreter (slurm/site.sh honours PYTHON)
    )
    return env


def sbatch(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> tuple[subprocess.CompletedProcess, str]:
    proc = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    job_id = proc.stdout.strip().split(";")[0].splitlines()[0] if proc.stdout.strip() else ""
    return proc, job_id


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_job(job_id: str, done, timeout: float, log: Path | None = None) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job_id)
        if done(info):
            return info
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"job {job_id} still {job_info(job_id).get('JobState')} after {timeout} s\n{tail}")


def wait_step(out_dir: Path, step: int, job_id: str, log: Path, timeout: float = 240) -> None:
    """Until status.json (written by rank 0 at each log step) shows `step`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads((out_dir / "status.json").read_text())["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass
        state = job_info(job_id).get("JobState")
        assert state not in FINAL, f"job {job_id} ended {state} early:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached:\n{log.read_text()[-3000:]}")


def mlflow_client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def _steps_left(job_id: str) -> bool:
    """Whether a slurmstepd of the job ("slurmstepd: [J.batch]", "[J.0]") still runs on this machine."""
    return subprocess.run(["pgrep", "-f", rf"^slurmstepd: \[{job_id}\."], capture_output=True).returncode == 0


def release(job_id: str, restarts: int = 1) -> dict[str, str]:
    """A requeued job waits ~120 s (its BeginTime): start it as soon as Slurm can.

    Not sooner: while the previous run's steps are still ending on the nodes, and within the second
    they ended in, slurmd refuses the new batch launch ("Job credential revoked": credentials are
    compared in whole seconds) and the job ends FAILED with exit code 1 and no line in its log; a
    loaded machine makes those steps end late. So: requeued, then no step left, then a second more.
    """

    def requeued(info: dict[str, str]) -> bool:
        return info.get("JobState") == "PENDING" and info.get("Restarts") == str(restarts)

    info = wait_job(job_id, requeued, 90)
    deadline = time.time() + 120
    while _steps_left(job_id):
        assert time.time() < deadline, f"job {job_id}: the steps of its previous run did not end in 120 s"
        time.sleep(0.2)
    time.sleep(1.5)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    return info


def test_the_templates_requeue_on_the_status_the_engine_exits_with_after_a_checkpoint():
    """slurm/lib.sh names the number once for the shell side (node_launch.sh reads it from there)."""
    from liere.engine.trainer import EXIT_PREEMPTED

    lib = (REPO / "slurm" / "lib.sh").read_text()
    assert re.search(rf"^export LIERE_EXIT_PREEMPTED={EXIT_PREEMPTED}$", lib, re.M), "slurm/lib.sh"
    assert "LIERE_EXIT_PREEMPTED" in (REPO / "slurm" / "node_launch.sh").read_text()


def test_sbatch_template_trains_on_two_nodes_and_records_a_finished_run(slurm_cluster, digits_root, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job-%j.out"
    proc, job_id = sbatch(
        [*TWO_NODES, "--wait", f"--output={log}", TEMPLATE, "configs/demo.yaml", *fast(digits_root, out)],
        job_env(tmp_path),
    )
    text = Path(str(log).replace("%j", job_id)).read_text()
    assert proc.returncode == 0, proc.stderr + text[-4000:]
    assert "2 node(s) n[1-2], 1 rank(s) per node: world size 2" in text
    assert "training finished" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 30
    client = mlflow_client(tmp_path)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2" and run.data.tags["slurm_job_id"] == job_id
    assert run.info.run_name == f"imagenet_liere-{job_id}"  # job name and id: stable across requeues
    assert job_info(job_id)["JobState"] == "COMPLETED"


def test_submit_py_trains_on_two_nodes_and_prints_job_logs_and_run(slurm_cluster, digits_root, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, SUBMIT, "--nodes", "2", "--gpus-per-node", "0", "--cpus-per-task", "1",
        "--config", "configs/demo.yaml", "--wait", "--name", "submit-test",
        "--job-dir", str(tmp_path / "submitit"), *fast(digits_root, out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=job_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = re.search(r"submitted job (\d+) to slurm: 2 node\(s\) x 1 rank\(s\)", proc.stdout).group(1)
    logs = re.search(r"logs: (\S+)", proc.stdout).group(1)
    assert logs == str(tmp_path / "submitit" / job_id / f"{job_id}_0_log.out")
    assert "MLflow: experiment 'demo', run 'submit-test'" in proc.stdout
    run_id = re.search(rf"job {job_id} finished: step 30, MLflow run (\w+)", proc.stdout).group(1)
    run = mlflow_client(tmp_path).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "submit-test"
    assert run.data.tags["world_size"] == "2" and run.data.tags["slurm_job_id"] == job_id
    assert "vit_nano_patch4 (liere8)" in Path(logs).read_text()  # rank 0's output in task 0's log


def _assert_one_continuous_run(tmp_path: Path, out: Path, first_run_id: str, steps: int, every: int) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == steps and summary["mlflow_run_id"] == first_run_id
    client = mlflow_client(tmp_path)
    assert client.get_run(first_run_id).info.status == "FINISHED"
    history = [m.step for m in client.get_metric_history(first_run_id, "train/loss")]
    assert history == list(range(every, steps + 1, every)), history  # no gap, no repeat


def test_a_requeued_sbatch_job_resumes_from_its_checkpoint_in_the_same_mlflow_run(
    slurm_cluster, digits_root, tmp_path
):
    out, log = tmp_path / "run", tmp_path / "job.out"
    proc, job_id = sbatch(
        [*TWO_NODES, f"--output={log}", TEMPLATE, "configs/demo.yaml", *fast(digits_root, out, 50, 2)],
        job_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    # 1. the time-limit warning (--signal=USR1@180): the ranks checkpoint, the script requeues the job
    wait_step(out, 10, job_id, log)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    release(job_id, restarts=1)
    # 2. preemption as `scontrol requeue` does it: SIGTERM to every process, then Slurm requeues
    wait_step(out, 24, job_id, log)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    release(job_id, restarts=2)
    info = wait_job(job_id, lambda i: i.get("JobState") in FINAL, 300, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-4000:]
    assert "requeueing job" in text and "Slurm is ending the job" in text
    first_run_id = re.search(r"MLflow run (\w+)", text).group(1)
    stops = [int(s) for s in re.findall(r"checkpointed at step (\d+) after signal", text)]
    assert len(stops) == 2 and 10 <= stops[0] < 24 <= stops[1] < 50, text[-4000:]
    for step in stops:
        assert f"resumed from {out / 'checkpoints'}/step_{step:09d}: step {step}" in text
    assert "(restart 1)" in text and "(restart 2)" in text
    _assert_one_continuous_run(tmp_path, out, first_run_id, 50, 2)


def _job_folders(job_dir: Path) -> list[str]:
    """submitit's folder per job: named by the job id."""
    return [p.name for p in job_dir.iterdir() if p.is_dir() and p.name.isdigit()] if job_dir.is_dir() else []


def test_submit_py_job_checkpoints_before_its_time_limit_requeues_and_resumes(
    slurm_cluster, digits_root, tmp_path
):
    out, job_dir = tmp_path / "run", tmp_path / "submitit"
    cmd = [
        sys.executable, SUBMIT, "--nodes", "2", "--gpus-per-node", "0", "--cpus-per-task", "1",
        "--config", "configs/demo.yaml", "--wait", "--name", "submit-requeue",
        "--job-dir", str(job_dir), *fast(digits_root, out, 40, 2),
    ]  # fmt: skip
    client = subprocess.Popen(
        cmd, cwd=REPO, env=job_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 60
        while not (ids := _job_folders(job_dir)) and time.time() < deadline:
            time.sleep(0.2)
        job_id = ids[0]
        log = job_dir / job_id / f"{job_id}_0_log.out"
        wait_step(out, 10, job_id, log)
        # what Slurm sends --signal-delay-s before the time limit: SIGUSR1 to every process of the step
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        release(job_id)
        output, _ = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, output[-4000:]
    text = log.read_text()  # task 0's log, appended to across the requeue
    assert "submit: launch/train.py exited with status 3; requeueing to resume" in text, text[-3000:]
    assert f"Requeued job {job_id}" in text
    first_run_id = re.search(r"MLflow run (\w+)", text).group(1)
    assert "resumed from" in text and "restart 1" in text
    assert re.search(rf"job {job_id} finished: step 40, MLflow run {first_run_id}", output), output[-3000:]
    _assert_one_continuous_run(tmp_path, out, first_run_id, 40, 2)


def _rank_pid(out_dir: Path, rank: int) -> int:
    """The pid of training rank `rank` (a child of node_launch.sh, not one of its loader workers)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
            ppid = int(re.search(r"PPid:\s+(\d+)", (proc / "status").read_text()).group(1))
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, AttributeError):
            continue
        if (
            f"train.out_dir={out_dir}".encode() in cmdline
            and f"RANK={rank}".encode() in environ
            and b"node_launch.sh" in parent
            and b"bash" not in cmdline[0]
        ):
            return int(proc.name)
    raise AssertionError(f"no process for rank {rank}")


def test_a_crashing_rank_fails_the_job_within_a_minute_with_its_error_in_the_log(
    slurm_cluster, digits_root, tmp_path
):
    out, log = tmp_path / "run", tmp_path / "job.out"
    proc, job_id = sbatch(
        [*TWO_NODES, f"--output={log}", TEMPLATE, "configs/demo.yaml", *fast(digits_root, out, 100000, 2)],
        job_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    wait_step(out, 4, job_id, log)
    pid = _rank_pid(out, 1)
    os.kill(pid, signal.SIGKILL)  # a rank dies as a segfault or the OOM killer would end it
    t0 = time.time()
    info = wait_job(job_id, lambda i: i.get("JobState") in FINAL, 60, log)
    elapsed = time.time() - t0
    text = log.read_text()
    assert info["JobState"] == "FAILED", text[-3000:]
    assert elapsed < 60
    assert f"rank 1 (pid {pid})" in text and "killed by signal KILL" in text, text[-3000:]
    assert "training failed" in text


def test_bad_submissions_fail_at_once_with_the_reason(slurm_cluster, tmp_path):
    env = job_env(tmp_path)
    proc, _ = sbatch(["--partition=nosuch", *TWO_NODES, TEMPLATE, "configs/demo.yaml"], env)
    assert proc.returncode != 0 and "invalid partition" in proc.stderr.lower(), proc.stderr

    base = [sys.executable, SUBMIT, "--nodes", "2", "--gpus-per-node", "0", "--job-dir", str(tmp_path / "s")]
    proc = subprocess.run(
        [*base, "--partition", "nosuch", "--config", "configs/demo.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "invalid partition" in proc.stderr.lower(), proc.stderr
    proc = subprocess.run(
        [*base, "--config", "configs/missing.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "config file not found" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [*base, "--config", "configs/demo.yaml", "train.epoch=3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Did you mean: 'epochs'" in proc.stderr, proc.stderr

    log = tmp_path / "missing.out"
    proc, job_id = sbatch([*TWO_NODES, "--wait", f"--output={log}", TEMPLATE, "configs/missing.yaml"], env)
    assert proc.returncode != 0
    assert "config not found: configs/missing.yaml" in log.read_text()
    assert job_info(job_id)["JobState"] == "FAILED"


def test_prepare_data_array_prepares_one_split_per_task(slurm_cluster, tmp_path):
    out, log = tmp_path / "data", tmp_path / "prepare-%A_%a.out"
    proc, job_id = sbatch(
        ["--array=0-1", "--cpus-per-task=1", "--wait", f"--output={log}", "slurm/prepare_data.sh", "digits",
         "--out", str(out)],
        job_env(tmp_path),
    )  # fmt: skip
    logs = [Path(str(log).replace("%A", job_id).replace("%a", str(i))) for i in (0, 1)]
    assert proc.returncode == 0, "\n".join(p.read_text()[-2000:] for p in logs if p.exists())
    for path, split in zip(logs, ("train", "val")):
        assert f"--splits {split} --workers 1" in path.read_text()
        manifest = json.loads((out / "digits" / "webdataset" / split / "manifest.json").read_text())
        assert manifest["num_samples"] > 0


def test_mlflow_server_job_serves_runs_and_publishes_its_address(slurm_cluster, tmp_path, monkeypatch):
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri_file, log = tmp_path / "mlflow_server.uri", tmp_path / "server.out"
    env = job_env(tmp_path) | {
        "MLFLOW_PORT": str(port),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_STORE": str(tmp_path / "store"),
        "MLFLOW_URI_FILE": str(uri_file),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_CREDENTIALS": str(tmp_path / "credentials"),  # made by the job (authentication is on)
    }
    proc, job_id = sbatch(["--cpus-per-task=1", f"--output={log}", "slurm/mlflow_server.sh"], env)
    assert proc.returncode == 0, proc.stderr
    try:
        deadline = time.time() + 90
        while not uri_file.exists() and time.time() < deadline:
            assert job_info(job_id).get("JobState") not in FINAL, log.read_text()
            time.sleep(0.5)
        uri = uri_file.read_text().strip()
        assert uri == f"http://127.0.0.1:{port}"
        assert f"export MLFLOW_TRACKING_URI={uri}" in log.read_text()
        with urllib.request.urlopen(uri + "/health", timeout=10) as r:
            assert r.status == 200
        from mlflow.tracking import MlflowClient

        assert f"password in {tmp_path / 'credentials'}" in log.read_text()
        with pytest.raises(urllib.error.HTTPError) as refused:  # no credentials, no runs
            urllib.request.urlopen(uri + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert refused.value.code == 401
        creds = dict(line.split("=", 1) for line in (tmp_path / "credentials").read_text().splitlines())
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(key, creds[key])
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("cluster-test"))
        client.log_metric(run.info.run_id, "x", 1.0, step=3)
        assert client.get_metric_history(run.info.run_id, "x")[0].step == 3
        assert (tmp_path / "store" / "mlflow.db").is_file()
    finally:
        subprocess.run(["scancel", job_id])
    wait_job(job_id, lambda i: i.get("JobState") in FINAL, 60, log)
    assert not uri_file.exists()  # the address is withdrawn with the server


def test_compare_runs_its_sweep_as_a_slurm_array_and_reports(slurm_cluster, digits_root, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "launch/compare.py", "configs/demo.yaml", "--encodings", "ape,rope_mixed", "--seeds", "1",
        "--sizes", "16", "--out", str(sweep), "--bootstrap", "200",
        "--slurm", "--nodes 1 --gpus-per-node 0 --cpus-per-task 1 --time 10",
        *fast(digits_root, tmp_path / "ignored", steps=6), "train.precision=fp32",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=job_env(tmp_path), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    array = re.search(r"submitted 2 runs as Slurm array (\d+) \(slurm\)", proc.stdout).group(1)
    assert re.search(rf"{array}_0: ape-s0", proc.stdout) and re.search(
        rf"{array}_1: rope_mixed-s0", proc.stdout
    )
    report = json.loads((sweep / "report.json").read_text())
    assert [a["finished"] for a in report["arms"]] == [1, 1]
    for name in ("ape-s0", "rope_mixed-s0"):  # each task trained its own run in the sweep's folder
        summary = json.loads((sweep / name / "summary.json").read_text())
        assert summary["step"] == 6
        run = mlflow_client(tmp_path).get_run(summary["mlflow_run_id"])
        assert (
            run.data.tags["mlflow.parentRunId"]
            == json.loads((sweep / "sweep.json").read_text())["parent_run_id"]
        )
        assert run.data.tags["slurm_job_id"]  # launched by Slurm
