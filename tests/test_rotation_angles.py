"""Per-step rotation angles, the relative share of the logits, and LieRE's grid-scaled init."""

from __future__ import annotations

import math

import pytest
import torch

from liere.encodings.angles import angle_summary, axis_steps, relative_share, step_angles
from liere.encodings.factory import build

GEOMETRY = {"head_dim": 64, "num_heads": 2, "depth": 3}


def _enc(name: str, grid, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build(name, num_axes=len(grid), grid_shape=grid, **GEOMETRY, **options)


def test_axis_steps_follow_the_scheme():
    assert axis_steps("proportional", (4, 8), (4, 8)) == pytest.approx([1 / 3, 1 / 7])
    assert axis_steps("proportional", (8, 8), (4, 4)) == pytest.approx([1 / 3, 1 / 3])  # training spacing
    assert axis_steps("rescale", (8, 8), (4, 4)) == pytest.approx([1 / 7, 1 / 7])
    assert axis_steps("index", (5, 5, 5), None) == [1.0, 1.0, 1.0]
    assert axis_steps("centered", (4, 1), None) == pytest.approx([0.5, 1.0])


def test_rope_angles_are_its_frequencies_and_fully_relative():
    enc = _enc("rope_mixed", (4, 4))
    freqs = enc.frequencies().detach().double().abs().flatten()  # index scheme: one step is 1
    assert torch.allclose(step_angles(enc).sort().values, freqs.sort().values)
    assert relative_share(enc) == pytest.approx(1.0, abs=1e-9)


def test_non_commuting_liere_is_less_relative_than_its_small_init():
    paper, small = _enc("liere64", (4, 4)), _enc("liere64", (4, 4), init="small")
    assert relative_share(paper) < 0.6 < 0.85 < relative_share(small) < 1.0


def test_relative_share_leaves_out_heads_without_rotation():
    enc = _enc("liere64", (4, 4), init="small")
    with torch.no_grad():
        enc.upper[:, :, 0] = 0  # head 0 of every layer: no rotation, logits the same for every pair
    assert 0.85 < relative_share(enc) < 1.0  # the other heads' share, not nan
    with torch.no_grad():
        enc.upper.zero_()
    assert math.isnan(relative_share(enc))  # no head varies with position: no share to give


def test_paper_init_aliases_on_small_grids():
    """The numbers the escape-time study starts from: 4 x 4 aliases, 14 x 14 does not."""
    s4 = angle_summary(step_angles(_enc("liere8", (4, 4))))
    s14 = angle_summary(step_angles(_enc("liere8", (14, 14))))
    assert s4["max"] > math.pi and 0.15 < s4["above_pi"] < 0.4
    assert s14["max"] < math.pi and s14["above_pi"] == 0.0


def test_paper_init_is_unchanged_bit_for_bit():
    enc = _enc("liere8", (4, 4), seed=3)
    torch.manual_seed(3)
    expected = torch.empty_like(enc.upper).uniform_(0.0, 2 * math.pi)
    assert torch.equal(enc.upper.detach(), expected)


@pytest.mark.parametrize(
    "grid", [(4, 4), (6, 10), (8, 8), (14, 14), (32, 32), (4, 4, 4), (8, 8, 8), (2, 14, 14)]
)
@pytest.mark.parametrize("name,band", [("liere8", (0.33, 0.5, 2.0)), ("liere64", (0.85, 1.2, 12.0))])
def test_grid_init_turns_like_the_paper_on_imagenet_at_any_grid(grid, name, band):
    """Median per-step angle in a fixed band whatever the training grid (2D and 3D, any aspect);
    8-blocks never alias (max below pi)."""
    lo, hi, top = band
    s = angle_summary(step_angles(_enc(name, grid, init="grid")))
    assert lo < s["median"] < hi and s["max"] < top
    if name == "liere8":
        assert s["max"] < math.pi


def test_grid_init_is_the_paper_draw_scaled_per_axis():
    paper, grid = _enc("liere8", (4, 8), seed=5), _enc("liere8", (4, 8), seed=5, init="grid")
    scale = torch.tensor([3 / 13, 7 / 13]).view(-1, 1, 1, 1, 1)
    assert torch.allclose(grid.upper.detach(), paper.upper.detach() * scale)
    on_imagenet = angle_summary(step_angles(_enc("liere8", (14, 14), seed=5)))
    assert angle_summary(step_angles(grid))["median"] == pytest.approx(on_imagenet["median"], rel=0.15)


def test_grid_init_needs_the_training_grid():
    with pytest.raises(ValueError, match="grid_shape"):
        build("liere8", num_axes=2, **GEOMETRY, init="grid")


def test_position_grid_keeps_the_pretraining_spacing():
    """Fine-tuning at 2x: with position_grid the 8 x 8 grid's positions step by 1/3 (the 4 x 4
    pretraining grid's spacing) instead of 1/7; additive encodings build as before."""
    from liere.encodings.positions import grid_positions
    from liere.models import create_model

    vit = create_model(
        "vit_nano_patch8", img_size=[64, 64], num_classes=8, encoding="liere8", position_grid=[4, 4]
    )
    assert torch.allclose(vit.encoding.positions((8, 8)), grid_positions((8, 8), (4, 4), "proportional"))
    plain = create_model("vit_nano_patch8", img_size=[64, 64], num_classes=8, encoding="liere8")
    assert float(plain.encoding.positions((8, 8))[1, 1]) == pytest.approx(1 / 7)
    assert (
        angle_summary(step_angles(vit.encoding))["median"]
        > 2 * angle_summary(step_angles(plain.encoding))["median"]
    )
    ape = create_model(
        "vit_nano_patch8", img_size=[64, 64], num_classes=8, encoding="ape", position_grid=[4, 4]
    )
    assert ape.encoding.pos_embed.shape[1] == 64
    with pytest.raises(ValueError, match="num_axes"):
        build("liere8", num_axes=2, grid_shape=(8, 8), reference_grid=(4, 4, 4), **GEOMETRY)


def test_generator_init_reaches_liere_only_and_yields_to_presets():
    from liere.models import create_model

    def vit(encoding, **kw):
        return create_model("vit_nano_patch8", img_size=[32, 32], num_classes=8, encoding=encoding, **kw)

    assert vit("liere8", generator_init="grid").encoding.init == "grid"
    assert vit("liere64", generator_init="small").encoding.init == "small"
    assert vit("rope_mixed_paper", generator_init="grid").encoding.init == "paper"  # the alias's own
    explicit = vit("liere8", generator_init="grid", encoding_options={"init": "small"})
    assert explicit.encoding.init == "small"
    for other in ("ape", "rope_mixed", "string", "comrope_ld"):  # no generators drawn by init: ignored
        vit(other, generator_init="grid")


def test_generator_init_and_position_grid_are_checked_in_the_config():
    from pathlib import Path

    from liere.engine.config import ConfigError, load_config

    compass = Path(__file__).resolve().parents[1] / "configs" / "compass2d.yaml"
    with pytest.raises(ConfigError, match=r"model\.generator_init"):
        load_config(compass, ["model.generator_init=wide"])
    with pytest.raises(ConfigError, match=r"model\.position_grid"):
        load_config(compass, ["model.position_grid=[4,4,4]"])
    assert load_config(compass, ["model.generator_init=grid"]).model.generator_init == "grid"
