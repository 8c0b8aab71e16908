"""Every recipe base and CPU config passes a dry run: the full-size model builds, FLOPs are counted,
and data that is not prepared is reported rather than fatal (embedded sets are prepared)."""

from pathlib import Path

import pytest

from liere.engine.config import load_config
from liere.engine.distributed import DistEnv
from liere.engine.trainer import _dry_run

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# a base of each recipe family (any encoding is an override: test_recipes.py), the heaviest encoding
# of each, and the CPU-scale configs whose embedded data sets get prepared here
CASES = [
    ("imagenet/paper_vit_b.yaml", []),
    ("imagenet/deit3_vit_s.yaml", ["model.encoding=liere64"]),
    ("imagenet/deit3_vit_s_ft384.yaml", []),  # init_from: the run it names need not exist yet
    ("imagenet/paper_vit_b_official.yaml", []),
    ("cifar100/paper_vit_b.yaml", ["model.encoding=string"]),
    ("video/ucf101_paper_vit_b.yaml", ["model.encoding=liere64"]),
    ("volume/medmnist3d64_vit_s.yaml", []),
    ("compass2d.yaml", []),
    ("compass3d.yaml", []),
    ("digits.yaml", []),
]


@pytest.mark.parametrize("name, overrides", CASES, ids=[" ".join([n, *o]) for n, o in CASES])
def test_dry_run_builds_the_model_with_or_without_prepared_data(name, overrides, tmp_path, capsys):
    cfg = load_config(CONFIGS / name, [f"data.root={tmp_path}", *overrides])
    result = _dry_run(cfg, DistEnv(rank=0, local_rank=0, world_size=1, launcher="single"))
    out = capsys.readouterr().out
    assert result["params"] > 1e5 and result["flops"] > 0
    assert f"config {CONFIGS / name}: OK" in out
    embedded = cfg.data.dataset in ("compass2d", "compass3d", "digits")
    assert result["data_ready"] == embedded
    assert ("first batch input" in out) == embedded and ("not prepared yet" in out) != embedded
