"""Configs: schema + YAML + dotted overrides; bad ones fail fast and name the key."""

import os
import subprocess
import sys

import pytest

from liere.engine.config import ConfigError, flatten, load_config

from ._train import DEMO, REPO, TRAIN


def test_demo_config_resolves_with_overrides():
    cfg = load_config(DEMO, ["train.zero_stage=3", "model.encoding=rope_mixed", "eval.sizes=[16,[24,32]]"])
    assert cfg.train.zero_stage == 3 and cfg.model.encoding == "rope_mixed"
    assert cfg.tracking.experiment == "demo" and cfg.train.out_dir == "runs/demo/run"
    flat = flatten(cfg)
    assert flat["model.img_size"] == "[16, 16]" and flat["optim.lr"] == "0.002"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "train.epoch"),
        ("train.epochs=many", "train.epochs"),
        ("train.precision=fp8", "train.precision='fp8'"),
        ("train.zero_stage=4", "train.zero_stage=4"),
        ("model.encoding=lire", "model.encoding='lire'"),
        ("model.name=vit_giant_patch16", "model.name='vit_giant_patch16'"),
        ("data.backend=tfrecord", "data.backend='tfrecord'"),
        ("eval.sizes=[[16,16,16]]", "eval.sizes"),
        ("sparsity.method=prune", "sparsity.method='prune'"),
        ("optim.encoding_weight_decay=-1", "optim.encoding_weight_decay=-1"),
        ("epochs", "key=value"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(DEMO, [override])


def test_the_extent_protocol_needs_a_data_set_that_draws_canvases():
    assert list(load_config(DEMO, ["eval.protocols=[zoom,extent]"]).eval.protocols) == ["zoom", "extent"]
    with pytest.raises(
        ConfigError, match=r"eval.protocols.*\(compass2d, compass3d, digits\), not 'cifar100'"
    ):
        load_config(DEMO, ["data.dataset=cifar100", "eval.protocols=[zoom,extent]"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_the_entry_point_fails_fast_before_any_work(tmp_path):
    out = subprocess.run(
        [sys.executable, str(TRAIN), str(DEMO), "optim.lrr=0.1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "optim.lrr" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists(), "nothing was started"
    assert REPO.joinpath("configs", "demo.yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.img_size=[18,18]"], "img_size"),  # not a whole grid of 4 px patches: the model refuses it
        (["model.encoding_options.block_size=5"], "block_size"),  # does not divide the head dim
        (["data.dataset=cifar100", "data.root=empty"], "cifar100"),  # a data set never prepared
        (
            ["sparsity.weight=0.1", "sparsity.tile=16"],
            "sparsity.tile=16",
        ),  # liere8: 8 x 8 blocks, no 16 x 16 tiles
    ],
)
def test_what_only_the_model_or_the_data_can_refuse_is_a_message_in_training_too(tmp_path, overrides, named):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    out = subprocess.run(
        [sys.executable, str(TRAIN), str(DEMO), "data.root=data", "tracking.enabled=false", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    error = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert error and named in error[0] and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_model_channels_and_classes_must_fit_the_data():
    """A config's model.in_chans that the data set does not have is named before any work (it used
    to pass a dry run and fail at the first forward); a head smaller than the classes too."""
    from pathlib import Path

    from liere.engine.config import load_config
    from liere.engine.data import model_spec

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "digits.yaml", ["model.in_chans=3"])
    info = {"channels": 1, "num_classes": 10, "spatial_rank": 2}
    with pytest.raises(ValueError, match=r"model.in_chans=3 .* 1-channel"):
        model_spec(cfg, info)
    cfg.model.in_chans, cfg.model.num_classes = 1, 5
    with pytest.raises(ValueError, match=r"model.num_classes=5 .* 10 classes"):
        model_spec(cfg, info)
    cfg.model.num_classes = None
    assert model_spec(cfg, info)["kwargs"]["in_chans"] == 1
