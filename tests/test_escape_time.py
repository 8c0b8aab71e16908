"""The escape-time study trains on what the engine trains on: its arrays are normalised as the loaders do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from escape_time import split_arrays

from liere.engine.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["compass2d.yaml", "compass3d.yaml"])
def test_study_inputs_have_the_loaders_scale(config):
    """Pixels in [0, 255] against statistics in [0, 1]: unscaled, the inputs would be ~255x too large."""
    cfg = load_config(REPO / "configs" / config, [])
    x, y = split_arrays(cfg, cfg.data.val_split)
    assert x.dtype == torch.float32 and x.shape[0] == y.shape[0]
    assert x.shape[2:] == tuple(cfg.model.img_size)  # channels first, the training size
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    assert per_channel.mean(1).abs().max() < 0.2
    assert ((per_channel.std(1) > 0.5) & (per_channel.std(1) < 2.0)).all()
    assert set(y.tolist()) == set(range(int(y.max()) + 1))
