"""Shared test settings: deterministic seeds, and one torch thread per pytest-xdist worker (the unit
tests run on as many workers as the machine has cores, see the Makefile's test target)."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # workers already fill the cores; more threads only contend


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
