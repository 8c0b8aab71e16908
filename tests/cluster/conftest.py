"""Fixtures of the cluster tests: a real two-node Slurm cluster on this machine, for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .slurm_cluster import PACKAGES, LocalSlurmCluster, missing_tools


def _unavailable(reason: str) -> None:
    """Skip outside CI; under CI=true the cluster tests must run, so a missing Slurm is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the Slurm cluster cannot start: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> LocalSlurmCluster:
    """munged + slurmctld + slurmd n1, n2; SLURM_CONF is exported for sbatch, squeue, scontrol, submitit."""
    missing = missing_tools()
    if missing:
        _unavailable(
            f"Slurm is not installed ({', '.join(missing)} missing): `make test` installs the Debian "
            f"packages {' '.join(PACKAGES)} (as root)"
        )
    if os.geteuid() != 0:
        _unavailable("the test cluster runs slurmd and munged as root (SlurmUser=root); run as root")
    cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except RuntimeError as err:
        cluster.stop()
        _unavailable(f"the local Slurm cluster did not start: {err}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """The embedded digits set, prepared once, shared by every job."""
    from pipelines import ensure_prepared

    root = tmp_path_factory.mktemp("data")
    ensure_prepared("digits", root, formats=["webdataset"], rank=0, world_size=1)
    return root
