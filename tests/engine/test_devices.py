"""The device and rendezvous rules of a GPU cluster, checked on CPUs.

No GPU runs here: torch.cuda's answers are patched (stand-ins for a node whose torch cannot use its
GPUs, for one visible GPU per task, for eight per node); the rest is real (environment, DNS, PATH).
"""

from __future__ import annotations

import pytest
import torch

from liere.engine import distributed
from liere.engine.distributed import DeviceError, DistEnv, device_for, expand_hostlist, slurm_master_addr


@pytest.mark.parametrize(
    ("nodes", "names"),
    [
        ("gpu[01-03,07],cpu4", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu4"]),
        ("node1", ["node1"]),
        ("a[8-11]", ["a8", "a9", "a10", "a11"]),
        ("x[1-2]-ib", ["x1-ib", "x2-ib"]),
    ],
)
def test_slurm_node_lists_expand_without_scontrol(nodes, names):
    assert expand_hostlist(nodes) == names


@pytest.fixture
def no_scontrol(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a container: no Slurm commands
    for var in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        monkeypatch.delenv(var, raising=False)


def test_the_rendezvous_is_the_first_node_and_never_silently_loopback_across_nodes(monkeypatch, no_scontrol):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "localhost,gpu[02-04]")
    assert slurm_master_addr() == "localhost"
    monkeypatch.setenv("SLURM_JOB_NODELIST", "nosuchnode-liere[01-04]")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "4")
    with pytest.raises(DeviceError, match=r"nosuchnode-liere01.*does not resolve.*set MASTER_ADDR"):
        slurm_master_addr()
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")  # one node whose name does not resolve: loopback
    assert slurm_master_addr() == "127.0.0.1"


RANK3 = DistEnv(rank=3, local_rank=3, world_size=8, launcher="slurm")


def _cuda(monkeypatch, available: bool, count: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_gpus_torch_cannot_use_are_an_error_naming_why(monkeypatch):
    _cuda(monkeypatch, available=False)
    monkeypatch.delenv("LIERE_ALLOW_CPU", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1,2,3")
    with pytest.raises(DeviceError, match=r"SLURM_JOB_GPUS=0,1,2,3.*LIERE_ALLOW_CPU=1") as err:
        device_for(RANK3)
    if torch.version.cuda is None:
        assert "CPU build" in str(err.value)
    monkeypatch.setenv("LIERE_ALLOW_CPU", "1")
    assert device_for(RANK3).type == "cpu"
    monkeypatch.delenv("LIERE_ALLOW_CPU")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose: the CPU it is
    assert device_for(RANK3).type == "cpu"


def test_one_visible_gpu_per_task_is_cuda_0_and_too_few_gpus_are_an_error(monkeypatch):
    _cuda(monkeypatch, available=True, count=1)  # --gpus-per-task=1: every rank sees its GPU as 0
    assert device_for(RANK3) == torch.device("cuda", 0)
    _cuda(monkeypatch, available=True, count=8)
    assert device_for(RANK3) == torch.device("cuda", 3)
    _cuda(monkeypatch, available=True, count=2)
    with pytest.raises(DeviceError, match="local rank 3 but this task sees 2 GPUs"):
        device_for(RANK3)


def test_deepspeed_follows_the_device_torch_uses(monkeypatch, capsys):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    distributed.align_accelerator(torch.device("cuda", 0), announce=True)
    assert distributed.os.environ["DS_ACCELERATOR"] == "cuda"
    assert "DS_ACCELERATOR=cpu replaced by cuda" in capsys.readouterr().out
    distributed.align_accelerator(torch.device("cpu"), announce=True)
    assert distributed.os.environ["DS_ACCELERATOR"] == "cpu"


def test_each_rank_is_bound_to_the_cpus_of_its_gpus_numa_node(tmp_path):
    """A stand-in for a GPU (its PCI address, as torch reports it) on NUMA node 1 of a sysfs tree:
    the process and its threads end on node 1's CPUs that it may use, only those. Run in a child
    process so that this one keeps its affinity."""
    import os
    import subprocess
    import sys
    import textwrap

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to tell a binding from none")
    allowed = sorted(os.sched_getaffinity(0))
    pci = tmp_path / "bus/pci/devices/0000:18:00.0"
    pci.mkdir(parents=True)
    (pci / "numa_node").write_text("1\n")
    for node, cpus in ((0, allowed[:1]), (1, allowed[1:])):
        d = tmp_path / f"devices/system/node/node{node}"
        d.mkdir(parents=True)
        d.joinpath("cpulist").write_text(",".join(map(str, cpus)) + "\n")
    code = textwrap.dedent(f"""
        import os, threading, types, torch
        from liere.engine import distributed
        props = types.SimpleNamespace(pci_domain_id=0, pci_bus_id=0x18, pci_device_id=0)
        torch.cuda.get_device_properties = lambda i: props  # stand-in: no GPU here
        started = threading.Event(); done = threading.Event()
        t = threading.Thread(target=lambda: (started.set(), done.wait())); t.start(); started.wait()
        cpus = distributed.bind_cpus_near_gpu(0, sysfs={str(tmp_path)!r})
        print(sorted(cpus), sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(t.native_id)))
        os.environ["LIERE_CPU_BIND"] = "0"
        print(distributed.bind_cpus_near_gpu(0, sysfs={str(tmp_path)!r}))
        done.set(); t.join()
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    bound, off = out.stdout.strip().splitlines()
    node1 = allowed[1:]
    assert bound == f"{node1} {node1} {node1}"  # the process and a thread started before the binding
    assert off == "None"
