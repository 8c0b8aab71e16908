"""Process-group set-up under any launcher: torchrun, the deepspeed launcher, srun, or none.

torchrun and the deepspeed launcher export RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT; under srun they are derived from SLURM_*; a plain process is rank 0 of 1.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def slurm_master_addr() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    try:
        first = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        first = nodes.split(",")[0]
    try:
        socket.gethostbyname(first)
        return first
    except OSError:  # node names that do not resolve (a cluster on one machine): loopback
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


def device_for(denv: DistEnv) -> torch.device:
    """This rank's device: its GPU when torch sees CUDA, else the CPU."""
    return torch.device("cuda", denv.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init(timeout_s: int, denv: DistEnv | None = None) -> tuple[DistEnv, torch.device]:
    """Discover the launcher, pick the device, and start the process group (NCCL or gloo)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed

    denv = denv or discover()
    device = device_for(denv)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            verbose=False,
        )
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
