"""Shared test settings: deterministic seeds and a small thread count for 2-core machines."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
