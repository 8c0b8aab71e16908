"""Launcher discovery: the torch.distributed environment from torchrun, srun or nothing."""

import os

import pytest

from liere.engine import distributed

DIST_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for key in (
        *DIST_KEYS,
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
        "SLURM_JOB_NODELIST",
        "SLURM_JOB_ID",
    ):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_plain_process_is_rank_zero_of_one(clean_env):
    denv = distributed.discover()
    assert (denv.rank, denv.world_size, denv.launcher) == (0, 1, "single")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0


def test_torchrun_variables_are_taken_as_they_are(clean_env):
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    denv = distributed.discover()
    assert (denv.rank, denv.local_rank, denv.world_size, denv.launcher) == (3, 1, 4, "torchrun")


def test_srun_tasks_become_ranks(clean_env):
    clean_env.setenv("SLURM_PROCID", "1")
    clean_env.setenv("SLURM_NTASKS", "2")
    clean_env.setenv("SLURM_LOCALID", "0")
    clean_env.setenv("SLURM_JOB_NODELIST", "localhost")
    clean_env.setenv("SLURM_JOB_ID", "1234")
    denv = distributed.discover()
    assert (denv.rank, denv.local_rank, denv.world_size, denv.launcher) == (1, 0, 2, "slurm")
    assert os.environ["MASTER_ADDR"] in ("localhost", "127.0.0.1")
    assert os.environ["MASTER_PORT"] == str(20000 + 1234)
