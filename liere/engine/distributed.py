"""Process-group set-up under any launcher: torchrun, the deepspeed launcher, srun, or none.

torchrun and the deepspeed launcher export RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT; under srun they are derived from SLURM_*; a plain process is rank 0 of 1.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from liere.engine import extensions


class DeviceError(RuntimeError):
    """A node whose GPUs or rendezvous this run cannot use; the message says why and what to do."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    launcher: str  # torchrun | slurm | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expand_hostlist(nodes: str) -> list[str]:
    """Slurm's compressed node list (``gpu[01-03,07],cpu4``) as names, without ``scontrol``."""
    names: list[str] = []
    for prefix, ranges, suffix, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]([^,]*)|([^,]+)", nodes):
        if plain:
            names.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            names.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi or lo) + 1))
    return names


def _node_addr(name: str) -> str | None:
    """The NodeAddr Slurm has for node ``name`` (its address where the name does not resolve)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "node", name, "-o"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\bNodeAddr=(\S+)", out)
    return found.group(1) if found else None


def _resolves(host: str) -> bool:
    try:
        socket.gethostbyname(host)
        return True
    except (OSError, UnicodeError):
        return False


def slurm_master_addr() -> str:
    """The first node of the job: its name, else the address Slurm knows it by (NodeAddr); a one-node
    job whose name does not resolve meets on loopback, a multi-node one is an error (never a hang)."""
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    try:
        first = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        first = (expand_hostlist(nodes) or [""])[0]  # containers: no scontrol
    if _resolves(first):
        return first
    addr = _node_addr(first)
    if addr and _resolves(addr):
        return addr
    if int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or "1") > 1:
        raise DeviceError(
            f"the first node of SLURM_JOB_NODELIST={nodes!r}, {first!r}, does not resolve and Slurm gives no "
            "address for it: the ranks of a multi-node job cannot meet there; set MASTER_ADDR to its address"
        )
    return "127.0.0.1"


def discover() -> DistEnv:
    """Fill the torch.distributed environment variables from whichever launcher started us."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        launcher = "slurm"
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", slurm_master_addr())
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        launcher = "single"
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")
    return DistEnv(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]), launcher)


def _gpus_advertised() -> str | None:
    """What says this node or task has NVIDIA GPUs, whether or not torch can use them."""
    for var in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE"):
        if os.environ.get(var, "").strip() not in ("", "0"):
            return f"{var}={os.environ[var]}"
    if os.path.exists("/proc/driver/nvidia/version"):
        return "an NVIDIA driver (/proc/driver/nvidia/version)"
    return None


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU build: run `make install` on a GPU node"
    try:
        torch.cuda.init()
    except Exception as err:  # e.g. a driver older than the build's CUDA
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot start CUDA: {err}"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU"


def device_for(denv: DistEnv) -> torch.device:
    """This rank's device: its GPU when torch sees CUDA, else the CPU.

    A node that has GPUs torch cannot use is an error naming why (not a silent, ~100x slower CPU run;
    ``LIERE_ALLOW_CPU=1`` accepts it); one visible GPU per task (``--gpus-per-task=1``) is ``cuda:0``."""
    if not torch.cuda.is_available():
        advertised = os.environ.get("CUDA_VISIBLE_DEVICES", None) != "" and _gpus_advertised()
        if advertised and os.environ.get("LIERE_ALLOW_CPU") != "1":
            raise DeviceError(
                f"this node has GPUs ({advertised}) but {_why_no_cuda()}; "
                "LIERE_ALLOW_CPU=1 trains on its CPUs instead"
            )
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)  # one GPU per task, or one rank per node
    if denv.local_rank >= count:
        raise DeviceError(
            f"local rank {denv.local_rank} but this task sees {count} GPUs "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): start one rank per GPU"
        )
    return torch.device("cuda", denv.local_rank)


def align_accelerator(device: torch.device, announce: bool) -> None:
    """DeepSpeed's accelerator follows torch's device: a DS_ACCELERATOR=cpu exported by a shell or by
    ``sbatch --export=ALL`` on a GPU node would otherwise put DeepSpeed on another device than the model."""
    wanted = "cuda" if device.type == "cuda" else "cpu"
    if os.environ.get("DS_ACCELERATOR", wanted) != wanted and announce:
        print(f"[distributed] DS_ACCELERATOR={os.environ['DS_ACCELERATOR']} replaced by {wanted}", flush=True)
    os.environ["DS_ACCELERATOR"] = wanted


def init(timeout_s: int, denv: DistEnv | None = None) -> tuple[DistEnv, torch.device]:
    """Discover the launcher, pick the device, and start the process group (NCCL or gloo)."""
    denv = denv or discover()
    device = device_for(denv)
    align_accelerator(device, denv.is_main)
    import deepspeed

    if device.type == "cuda":
        torch.cuda.set_device(device)
        cpus = bind_cpus_near_gpu(device.index or 0)
        if cpus:
            log0(
                denv, f"CPU affinity: each rank on the CPUs of its GPU's NUMA node (rank 0: {len(cpus)} CPUs)"
            )
    if not dist.is_initialized():
        extensions.use_environment_folder()
        if denv.local_rank == 0:  # a lock left by a killed rank would hang the op's load below
            extensions.clear_stale_locks(announce=lambda msg: print(msg, flush=True))
        deepspeed.init_distributed(
            dist_backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            verbose=False,
        )
    _control_group()  # every rank, right after the main group: the same order everywhere
    return denv, device


def log0(denv: DistEnv, *msg: object) -> None:
    """Print on rank 0 only."""
    if denv.is_main:
        print(*msg, flush=True)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` holds on any rank (e.g. a signal that reached one rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# The end of a run waits this long for rank 0's exports and uploads (a file system or an MLflow server
# may be slow): far past any export, so only Slurm's time limit or a dead rank 0 ends the wait.
FINISH_WAIT_S = 7 * 24 * 3600
_CONTROL: dict[str, Any] = {}


def _multi() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def _control_group(timeout_s: float = FINISH_WAIT_S):
    """A CPU (gloo) group beside the main one for agreements between ranks that must not wait for the
    device: its collectives run on host tensors, so they neither sync a GPU stream nor fall under NCCL's
    watchdog. Its timeout is the end-of-run wait's (a dead peer still fails it at once: its sockets
    close; a hung one fails the main group's collectives first). Created once per process group, by
    every rank (new_group is collective)."""
    if not _multi():
        return None
    if _CONTROL.get("world") is not dist.group.WORLD:
        timeout = datetime.timedelta(seconds=timeout_s)
        _CONTROL.update(world=dist.group.WORLD, group=dist.new_group(backend="gloo", timeout=timeout))
    return _CONTROL["group"]


class AnyRankLater:
    """``any_rank`` once per step without a device sync or a wait: each call starts an asynchronous MAX
    all-reduce of this call's flag over the CPU group and returns the previous call's result, the same on
    every rank (a signal is acted on one step later). One rank: the flag itself, at once."""

    def __init__(self) -> None:
        self._pending: tuple[Any, torch.Tensor] | None = None

    def __call__(self, flag: bool) -> bool:
        if not _multi():
            return flag
        agreed = self.drain()
        if not agreed:  # after a True every rank stops voting: none is left pending
            vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
            work = dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=_control_group(), async_op=True)
            self._pending = (work, vote)
        return agreed

    def drain(self) -> bool:
        """The pending vote's result (False if none); afterwards nothing is in flight."""
        if self._pending is None:
            return False
        work, vote = self._pending
        self._pending = None
        work.wait()
        return bool(vote.item() > 0)  # a host tensor: no device sync


def leave_together() -> None:
    """The end of a run: the other ranks wait for rank 0 in a barrier of the CPU group (FINISH_WAIT_S,
    not the device group's ``dist_timeout_s``: a slow export or upload on rank 0 must not kill them),
    then every rank destroys the process groups at the same time, as NCCL wants."""
    if not _multi():
        return
    dist.barrier(group=_control_group())
    _CONTROL.clear()
    dist.destroy_process_group()


def bind_cpus_near_gpu(gpu_index: int, sysfs: str | os.PathLike | None = None) -> set[int] | None:
    """Bind every thread of this process to the allowed CPUs of the NUMA node that holds GPU
    ``gpu_index`` (sysfs: the GPU's PCI address -> numa_node -> that node's cpulist), as torchrun's
    ``--numa-binding=node`` does for the processes it starts; this project starts its ranks itself
    (slurm/node_launch.sh). Returns the CPUs, or None where nothing is known (no sysfs entry, one
    node, an empty intersection) or ``LIERE_CPU_BIND=0``. Loader workers inherit the binding."""
    if os.environ.get("LIERE_CPU_BIND", "1") == "0":
        return None
    root = Path(sysfs or os.environ.get("LIERE_SYSFS", "/sys"))
    props = torch.cuda.get_device_properties(gpu_index)
    address = f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    try:
        node = int((root / "bus/pci/devices" / address / "numa_node").read_text())
        cpulist = (root / f"devices/system/node/node{max(node, 0)}/cpulist").read_text()
    except (OSError, ValueError):
        return None
    cpus = _parse_cpulist(cpulist) & os.sched_getaffinity(0)
    if not cpus or cpus == os.sched_getaffinity(0):
        return None
    for tid in os.listdir("/proc/self/task"):  # threads already started (OpenMP, loaders) as well
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that ended meanwhile
            continue
    return cpus


def _parse_cpulist(text: str) -> set[int]:
    """``0-3,8,10-11`` -> {0, 1, 2, 3, 8, 10, 11}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus
