"""Training runs on Slurm through submitit: the task that starts each rank, the executor, the wait.

One task per GPU (one per node without GPUs); each task runs launch/train.py in a child process with
RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from submitit's TorchDistributedEnvironment. The job
is checkpointable: before the time limit (SIGUSR1, --signal-delay-s ahead) or on preemption every
rank checkpoints, the job requeues and resumes from checkpoints/latest in the same MLflow run.
launch/submit.py submits one run; the sweep (``sweep``) submits its runs as one job array.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The engine checkpoints on SIGUSR1 and SIGTERM: make submitit's pre-timeout signal SIGUSR1 (its
# default is SIGUSR2, which would kill the training processes). Read when submitit is imported.
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")
import submitit

from liere.engine.trainer import EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[2]
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
}  # fmt: skip
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankLauncher(submitit.helpers.Checkpointable):
    """One submitit task = one rank: starts launch/train.py as a child process and waits for it.

    The child (the same entry point as every other launch mode) owns the signals: Slurm signals every
    process of the job, the engine checkpoints on all ranks and exits with status 3. On SIGUSR1,
    submitit calls ``checkpoint`` on rank 0, which waits for that checkpoint and returns this same
    callable; submitit then requeues the job, whose restart resumes from ``checkpoints/latest``.
    """

    def __init__(self, config: str, overrides: list[str], out_dir: str, python: str = sys.executable) -> None:
        self.config = config
        self.overrides = list(overrides)
        self.out_dir = out_dir
        self.python = python
        self._child: subprocess.Popen | None = None
        self._returncode: int | None = None
        self._terminated = False

    def __getstate__(self) -> dict[str, Any]:  # what is pickled for a (re)start: no process state
        return {k: v for k, v in self.__dict__.items() if k in ("config", "overrides", "out_dir", "python")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def _dist_env(self) -> tuple[dict[str, str], int]:
        env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
        dist = submitit.helpers.TorchDistributedEnvironment()
        if dist.world_size == 1:
            return env, 0  # the engine's single-process mode picks its own port
        if submitit.JobEnvironment().cluster == "slurm":
            from liere.engine.distributed import slurm_master_addr

            dist.master_addr = slurm_master_addr()  # the first node, or loopback where names do not resolve
        else:
            dist.master_addr = "127.0.0.1"  # submitit's local cluster: this one machine
        env.update(
            RANK=str(dist.rank),
            LOCAL_RANK=str(dist.local_rank),
            WORLD_SIZE=str(dist.world_size),
            LOCAL_WORLD_SIZE=str(dist.local_world_size),
            MASTER_ADDR=dist.master_addr,
            MASTER_PORT=str(dist.master_port),
        )
        env.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        return env, dist.rank

    def __call__(self) -> dict[str, Any] | None:
        env, rank = self._dist_env()
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"submit: rank {rank} starting launch/train.py (restart {restarts})", flush=True)
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):  # Slurm is ending the job (preemption, requeue, scancel)
            self._terminated = True
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_term)
        cmd = [self.python, str(REPO / "launch" / "train.py"), self.config, *self.overrides]
        self._child = subprocess.Popen(cmd, cwd=REPO, env=env)
        # a thread reaps the child, so waiting here and in checkpoint() (a signal handler) never deadlock
        threading.Thread(target=self._reap, daemon=True).start()
        rc = self._wait_child()
        if rc == 0:
            return self._summary() if rank == 0 else None
        if rc == EXIT_PREEMPTED:
            handler = signal.getsignal(signal.SIGUSR1)
            if rank == 0 and not self._terminated and callable(handler):
                # the engine stopped on SIGUSR1 before submitit's handler ran: let it checkpoint and requeue
                handler(signal.SIGUSR1, None)
            deadline = time.time() + 120
            while rank != 0 and not self._terminated and time.time() < deadline:
                time.sleep(0.5)  # leave the requeue to rank 0; Slurm's SIGTERM ends the wait
            sys.exit(EXIT_PREEMPTED)  # no result: a waiting client keeps waiting for the restart
        raise RuntimeError(f"rank {rank}: launch/train.py {_describe(rc)}\n{self._stderr_tail()}")

    def _reap(self) -> None:
        assert self._child is not None
        self._returncode = self._child.wait()

    def _wait_child(self) -> int:
        while self._returncode is None:
            time.sleep(0.2)
        return self._returncode

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 when SIGUSR1 arrives: wait for the engine's checkpoint, requeue."""
        if self._child is not None:
            if self._returncode is None:
                self._child.send_signal(signal.SIGUSR1)  # Slurm signalled it too; a second one is harmless
            rc = self._wait_child()
            print(f"submit: launch/train.py {_describe(rc)}; requeueing to resume", flush=True)
        return super().checkpoint(*args, **kwargs)

    def _summary(self) -> dict[str, Any]:
        import json

        path = REPO / self.out_dir / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {"out_dir": self.out_dir}

    def _stderr_tail(self, lines: int = 25) -> str:
        try:
            path = submitit.JobEnvironment().paths.stderr
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except Exception:  # the tail is a courtesy; the log file is the record
            return ""


def _describe(rc: int) -> str:
    if rc < 0:
        return f"was killed by signal {signal.Signals(-rc).name}"
    return f"exited with status {rc}"


# ---------------------------------------------------------------------------------------------
# submission
# ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """launch/submit.py's flags (also what a sweep's ``--slurm "FLAGS"`` takes)."""
    p.add_argument(
        "overrides", nargs="*", help="dotted config overrides, e.g. optim.lr=2e-3 train.epochs=300"
    )
    p.add_argument("--config", default="configs/imagenet_vit_b_liere8.yaml", help="YAML experiment")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="one rank per GPU; 0: one rank per node")
    p.add_argument(  # 8 x 8 ranks fit a 64-core node (10 asked for 80 and never started there)
        "--cpus-per-task", type=int, default=8, help="CPU cores per rank (loader workers included)"
    )
    p.add_argument("--mem-gb", type=float, default=None, help="memory per node (default: the partition's)")
    p.add_argument(
        "--partition", default=os.environ.get("SBATCH_PARTITION"), help="default: $SBATCH_PARTITION"
    )
    p.add_argument("--account", default=os.environ.get("SBATCH_ACCOUNT"), help="default: $SBATCH_ACCOUNT")
    p.add_argument("--qos", default=os.environ.get("SBATCH_QOS"), help="default: $SBATCH_QOS")
    p.add_argument("--constraint", default=None, help="node features, e.g. a100|h100")
    p.add_argument("--time", default="48:00:00", help="time limit: minutes, H:MM:SS or D-HH:MM:SS")
    p.add_argument("--signal-delay-s", type=int, default=180, help="SIGUSR1 this long before the time limit")
    p.add_argument("--max-requeues", type=int, default=20, help="time-limit requeues before giving up")
    p.add_argument("--job-name", default=None, help="Slurm job name (default: the run name)")
    p.add_argument(
        "--name", default=None, help="run name: MLflow run and out_dir (default: CONFIG-DATE-TIME)"
    )
    p.add_argument(
        "--job-dir", default=None, help="submitit's folder: logs, pickles (default: runs/submitit/NAME)"
    )
    p.add_argument(
        "--cluster", choices=["slurm", "local", "debug"], default=None, help="default: slurm if srun exists"
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the job, print its summary; exit 1 if it failed"
    )
    return p


def parse_flags(argv: list[str]) -> argparse.Namespace:
    """launch/submit.py's flags from a list, e.g. a sweep's ``--slurm "FLAGS"`` split."""
    return add_arguments(argparse.ArgumentParser(allow_abbrev=False)).parse_args(argv)


def parse_time(text: str) -> int:
    """Minutes from Slurm's time formats: M, H:MM:SS, D-HH[:MM[:SS]]."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"--time {text!r}: expected minutes, H:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is None and b is None:
        return a  # plain minutes
    hours, minutes, seconds = a, b or 0, c or 0
    return max(1, (days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0))


def make_executor(args: argparse.Namespace, folder: Path, name: str) -> submitit.Executor:
    executor = submitit.AutoExecutor(
        folder=folder, cluster=args.cluster, slurm_max_num_timeout=args.max_requeues
    )
    ranks_per_node = max(1, args.gpus_per_node)
    params: dict[str, Any] = {
        "name": args.job_name or name,
        "nodes": args.nodes,
        "tasks_per_node": ranks_per_node,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "timeout_min": parse_time(args.time),
    }
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if executor.cluster == "slurm":
        params.update(
            slurm_signal_delay_s=args.signal_delay_s,
            # a rank that fails stops the others at once (they would wait for it in a collective)
            slurm_srun_args=["--kill-on-bad-exit=1", "--open-mode=append"],  # logs kept across requeues
            slurm_additional_parameters={"requeue": True},
            # the site's settings (modules, NCCL, MLflow), as for the sbatch templates
            slurm_setup=[
                f"export LIERE_ROOT={REPO} SUBMITIT_PREEMPT_SIGNAL=USR1",
                f"source {REPO}/slurm/site.sh",
            ],
        )
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(args, key):
                params[f"slurm_{key}"] = getattr(args, key)
    executor.update_parameters(**params)
    return executor


def _scontrol_state(job_id: str) -> str | None:
    """JobState from scontrol (works without accounting, unlike sacct); None if unknown."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\bJobState=(\S+)", out)
    return m.group(1) if m else None


def _has_accounting(job_id: str) -> bool:
    try:
        return (
            subprocess.run(["sacct", "-n", "-X", "-j", job_id], capture_output=True, timeout=30).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def wait_for(job: submitit.Job, cluster: str, poll_s: float = 2.0) -> list[Any]:
    """Wait until the job ends; its results (one per task), or raise with the reason.

    submitit learns a job's state from sacct (Slurm accounting); where there is none (the test
    cluster) scontrol tells us that a job ended without writing results (failed, cancelled, a node
    failure). A requeued job is PENDING again and is waited for.
    """
    if cluster != "slurm":
        return job.results()
    tasks = [job.task(i) for i in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    accounting = _has_accounting(job.job_id)
    last_state = None
    while not all(t.paths.result_pickle.exists() for t in tasks):
        if accounting and job.done():
            break
        state = _scontrol_state(job.job_id)
        if state and state != last_state:
            print(f"job {job.job_id}: {state}", flush=True)
            last_state = state
        if state in FINAL_STATES:
            time.sleep(3)  # results are written just before the job ends: give the file system a moment
            if all(t.paths.result_pickle.exists() for t in tasks):
                break
            errors = [str(t.exception()) for t in tasks if t.paths.result_pickle.exists()]
            errors = [e for e in errors if e != "None"]
            reason = errors[0] if errors else f"no task wrote a result; see {job.paths.stderr}"
            raise RuntimeError(f"job {job.job_id} ended {state}: {reason}")
        time.sleep(poll_s)
    return job.results()


def submit(args: argparse.Namespace) -> int:
    """Check the config, submit one run as one job, say where its logs and MLflow run are; with
    ``args.wait`` wait for it. The exit status: 0, 1 (not submitted, or failed), 2 (a config error)."""
    from liere.engine.config import ConfigError, load_config
    from liere.engine.tracking import resolve_uri
    from liere.orchestration.cli import fail

    name = args.name or f"{Path(args.config).stem}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    overrides = [f"tracking.run_name={name}", *args.overrides]  # the user's overrides come last and win
    try:  # every config error shows here, before anything is queued
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        return fail(err)
    config = str(Path(args.config).resolve())
    out_dir = str(cfg.train.out_dir)
    folder = Path(args.job_dir or REPO / "runs" / "submitit" / name).resolve()
    try:
        executor = make_executor(args, folder / "%j", name)
        job = executor.submit(RankLauncher(config, overrides, out_dir))
    except (submitit.core.utils.FailedJobError, ValueError) as err:  # e.g. sbatch: invalid partition
        return fail(f"the job was not submitted: {err}", 1)
    print(
        f"submitted job {job.job_id} to {executor.cluster}: {args.nodes} node(s) x {max(1, args.gpus_per_node)} rank(s)"
    )
    print(f"logs: {job.paths.stdout}\n      {job.paths.stderr}  (one pair per task: _0_, _1_, ...)")
    print(
        f"MLflow: experiment '{cfg.tracking.experiment}', run '{name}' at {resolve_uri(cfg.tracking.uri)}; "
        f"out_dir {out_dir}",
        flush=True,
    )
    return _wait_and_report(job, executor.cluster) if args.wait else 0


def _wait_and_report(job: submitit.Job, cluster: str) -> int:
    """Wait for the job; print its step, MLflow run and evaluation sweep, or why it failed."""
    from liere.engine.evaluate import size_name

    try:
        results = wait_for(job, cluster)
    except Exception as err:
        print(f"error: job {job.job_id} failed:\n{err}", file=sys.stderr)
        return 1
    summary = next((r for r in results if r), {})
    print(f"job {job.job_id} finished: step {summary.get('step')}, MLflow run {summary.get('mlflow_run_id')}")
    for row in summary.get("sweep", []):
        size = size_name(row["size"])
        print(f"  eval {size}: top-1 {100 * row['top1']:.2f}%  top-5 {100 * row['top5']:.2f}%")
    return 0
