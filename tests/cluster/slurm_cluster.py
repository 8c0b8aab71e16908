"""A real Slurm cluster on this machine: munged, slurmctld and two slurmd daemons posing as nodes n1, n2.

Used by the cluster tests (conftest.py) and by hand for debugging:

    .venv/bin/python -m tests.cluster.slurm_cluster up     # prints `export SLURM_CONF=...`; Ctrl-C stops it

Everything (config, state, spool, logs) lives in one folder; ports are picked free at start. The
daemons run in the foreground as our children, so they are stopped by pid, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge")
NODES = ("n1", "n2")
CPUS_PER_NODE = 2


def missing_tools() -> list[str]:
    """The Slurm and munge programs this machine lacks."""
    tools = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue")
    return [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def _which(tool: str) -> str:
    return shutil.which(tool) or str(Path("/usr/sbin", tool))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _real_memory_mb() -> int:
    """RealMemory for each fake node: at most what `slurmd -C` reports (Slurm refuses a node claiming more)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith("RealMemory="):
            return max(1000, min(8000, int(word.split("=")[1]) // 2))
    return 4000


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=True).stdout
        subprocess.run(["unmunge"], input=cred, capture_output=True, timeout=10, check=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


class LocalSlurmCluster:
    """Start with ``start()``, stop with ``stop()``; ``env`` holds SLURM_CONF for clients."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="slurm-"))
        self.conf = self.root / "slurm.conf"
        self.log_dir = self.root / "log"
        self._procs: list[subprocess.Popen] = []
        self._munged: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- set-up ----------------------------------------------------------------------------------
    def write_config(self) -> None:
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        for sub in ("state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        memory = _real_memory_mb()
        nodes = "\n".join(
            f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
            f"CPUs={CPUS_PER_NODE} RealMemory={memory} State=UNKNOWN"
            for name, port in zip(NODES, node_ports)
        )
        r = self.root
        self.conf.write_text(
            f"""# A two-node cluster on one machine (tests/cluster/slurm_cluster.py); no cgroups, no accounting.
ClusterName=liere-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.txt
# finished jobs stay visible to scontrol for 10 minutes (there is no sacct without accounting)
MinJobAge=600
# a signalled step has this long to checkpoint before SIGKILL
KillWait=30
InactiveLimit=0
SlurmdTimeout=60
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        )

    def _start_munge(self) -> None:
        if _munge_works():  # a munged already serves this machine: use it, and leave it running
            return
        for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        self._munged = subprocess.Popen(
            ["runuser", "-u", "munge", "--", _which("munged"), "--foreground", "--force"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_dir / "munged.log", "w"),  # noqa: SIM115 (lives as long as munged)
        )
        self._wait(_munge_works, 20, "munged did not answer")

    def start(self, timeout: float = 60) -> LocalSlurmCluster:
        self.write_config()
        self._start_munge()
        conf = ["-f", str(self.conf)]
        self._spawn([_which("slurmctld"), "-D", "-i", *conf], "slurmctld")
        self._wait(lambda: self._scontrol_ok(["ping"]), timeout, "slurmctld did not come up")
        for name in NODES:
            self._spawn([_which("slurmd"), "-D", "-N", name, *conf], f"slurmd-{name}-stdout")
        self._wait(self._nodes_idle, timeout, "the nodes did not become idle")
        return self

    def _spawn(self, cmd: list[str], log: str) -> None:
        out = open(self.log_dir / f"{log}.out", "w")  # noqa: SIM115 (lives as long as the daemon)
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))

    def _scontrol_ok(self, args: list[str]) -> bool:
        p = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=30)
        return p.returncode == 0 and "DOWN" not in p.stdout

    def _nodes_idle(self) -> bool:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True, timeout=30
        ).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n, "").startswith("idle") for n in NODES)

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [p.args[0] for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{what}: {dead} exited; logs in {self.log_dir}\n{self.logs()}")
            if ok():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout:.0f} s; logs in {self.log_dir}\n{self.logs()}")

    def logs(self, tail: int = 30) -> str:
        parts = []
        for f in sorted(self.log_dir.glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- tear-down ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel what is left, let it finish (a step whose slurmd is gone lingers), then `scontrol
        shutdown` (stops slurmctld and every slurmd), then our own daemons by pid."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            ids = subprocess.run(
                ["squeue", "-h", "-o", "%A"], env=self.env, capture_output=True, text=True, timeout=30
            ).stdout.split()
            if ids:
                subprocess.run(["scancel", *ids], env=self.env, capture_output=True, timeout=30)
            deadline = time.time() + 60
            while (
                time.time() < deadline
                and subprocess.run(
                    ["squeue", "-h"], env=self.env, capture_output=True, text=True, timeout=30
                ).stdout.strip()
            ):
                time.sleep(0.5)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=30)
        for p in self._procs:
            _stop(p, grace=15)
        if self._munged is not None:  # only a munged we started; after the daemons that use it
            self._munged.send_signal(signal.SIGTERM)
            _stop(self._munged, grace=10)
        self._procs.clear()
        self._munged = None


def _stop(p: subprocess.Popen, grace: float) -> None:
    """Wait for `p` to exit, then SIGTERM it, then SIGKILL it."""
    try:
        p.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main(argv: list[str]) -> int:
    if argv[:1] != ["up"]:
        print(__doc__)
        return 2
    cluster = LocalSlurmCluster().start()
    print(
        f"export SLURM_CONF={cluster.conf}   # logs in {cluster.log_dir}; Ctrl-C stops the cluster",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
