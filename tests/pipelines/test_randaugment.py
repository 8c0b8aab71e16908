"""RandAugment (pipelines/randaugment.py): each op on its own, the per-sample seeding, the loaders' option."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_loader, require, require_backend

from pipelines import BACKENDS
from pipelines import randaugment as RA

GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
WITH_MAGNITUDE = (*GEOMETRIC, "solarize", "color", "posterize", "contrast", "brightness", "sharpness")
# DALI's own RandAugment suite still calls its deprecated alias fn.experimental.equalize
pytestmark = pytest.mark.filterwarnings("ignore:.*experimental.equalize.*:DeprecationWarning")


def image(channels=3, h=20, w=24, seed=0):
    """A smooth gradient with noise: every op has something to change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 40 + 6 * yy[None] + 5 * xx[None] + 20 * np.arange(channels)[:, None, None]
    return torch.from_numpy((base + rng.integers(0, 30, (channels, h, w))).clip(0, 255).astype(np.uint8))


def make(backend, root, dataset="compass2d", split="train", **kw):
    workers = 0 if backend == "webdataset" else 1
    options = {"train": True, "image_size": 16, "batch_size": 8, "workers": workers, **kw}
    return make_loader(backend, root, dataset, split, **options)


# ---- the ops ---------------------------------------------------------------------------------------------
def test_the_papers_fourteen_ops():
    assert len(RA.OPS) == 14 and len(set(RA.OPS)) == 14
    assert RA.MAX_MAGNITUDE == 30


@pytest.mark.parametrize("op", RA.OPS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_dtype_shape_and_range(op, channels):
    for img in (
        image(channels),
        torch.zeros(channels, 9, 7, dtype=torch.uint8),
        torch.full((channels, 9, 7), 255, dtype=torch.uint8),
    ):
        for magnitude in (0, 9, 30):
            for sign in (1.0, -1.0):
                out = RA.apply_op(img, op, magnitude, sign)
                assert out.dtype == torch.uint8 and out.shape == img.shape, (op, magnitude, sign)
                # never writes into its input
                assert out is img or not np.shares_memory(out.numpy(), img.numpy())


def test_enhance_ops_saturate_instead_of_wrapping():
    bright = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    assert int(RA.apply_op(bright, "brightness", 30, 1.0).min()) == 255
    two = torch.tensor([[[10, 250]]], dtype=torch.uint8).expand(3, 4, 2).contiguous()
    out = RA.apply_op(two, "contrast", 30, 1.0)
    assert int(out.min()) == 0 and int(out.max()) == 255


@pytest.mark.parametrize("op", WITH_MAGNITUDE)
def test_magnitude_zero_is_the_identity(op):
    for channels in (1, 3):
        img = image(channels)
        for sign in (1.0, -1.0):
            assert torch.equal(RA.apply_op(img, op, 0, sign), img), op


@pytest.mark.parametrize("op", WITH_MAGNITUDE)
def test_full_magnitude_changes_the_image(op):
    img = image(3)
    assert not torch.equal(RA.apply_op(img, op, 30, 1.0), img), op


def test_enhance_and_histogram_ops_agree_with_pil():
    from PIL import Image, ImageEnhance, ImageOps

    img = image(3, 32, 32) // 2 + 50  # not covering 0..255, so autocontrast has work to do
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())

    def close(ours, theirs, tol=1):
        ref = torch.from_numpy(np.array(theirs)).permute(2, 0, 1).to(torch.int32)
        return int((ours.to(torch.int32) - ref).abs().max()) <= tol

    for name, enhancer in (
        ("brightness", ImageEnhance.Brightness),
        ("color", ImageEnhance.Color),
        ("contrast", ImageEnhance.Contrast),
        ("sharpness", ImageEnhance.Sharpness),
    ):
        for sign in (1.0, -1.0):
            factor = 1 + sign * 0.9 * 12 / 30
            assert close(RA.apply_op(img, name, 12, sign), enhancer(pil).enhance(factor)), (name, sign)
    assert close(RA.apply_op(img, "autocontrast", 0), ImageOps.autocontrast(pil))  # we round, PIL truncates
    assert close(RA.apply_op(img, "equalize", 0), ImageOps.equalize(pil), tol=0)
    assert close(RA.apply_op(img, "posterize", 30), ImageOps.posterize(pil, 4), tol=0)
    assert close(RA.apply_op(img, "solarize", 15), ImageOps.solarize(pil, 128), tol=0)


def test_geometric_ops_move_the_content_and_fill_with_gray():
    img = torch.zeros(1, 10, 20, dtype=torch.uint8)
    img[0, :, 4] = 255  # a vertical line at x = 4
    shifted = RA.apply_op(img, "translate_x", 10, 1.0)  # 0.45 * 10/30 * 20 = 3 px
    assert torch.equal(shifted[0, :, 7], torch.full((10,), 255, dtype=torch.uint8))
    assert torch.equal(shifted[0, :, :3], torch.full((10, 3), 128, dtype=torch.uint8))
    down = RA.apply_op(img, "translate_y", 30, -1.0)  # 0.45 * 10 = 4.5 -> 4 px up
    assert torch.equal(down[0, -4:], torch.full((4, 20), 128, dtype=torch.uint8))
    square = image(3, 21, 21)
    turned = RA.apply_op(square, "rotate", 30, 1.0)
    assert torch.equal(turned[:, 10, 10], square[:, 10, 10])  # rotates about the center
    assert torch.equal(turned[:, 0, 0], torch.full((3,), 128, dtype=torch.uint8))  # corners come from outside


def test_color_is_the_identity_on_gray_images():
    img = image(1)
    assert torch.equal(RA.apply_op(img, "color", 30, 1.0), img)


def test_rejects_what_it_cannot_augment():
    with pytest.raises(TypeError, match="uint8"):
        RA.apply_op(torch.zeros(3, 4, 4), "rotate", 9)
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        RA.apply_op(image(), "invert", 9)


@pytest.mark.parametrize("bad", [[2], [0, 9], [2, 31], [2, -1], [2, 9.5], "2,9", [True, 9], (2, 9, 1), 5])
def test_bad_settings_are_a_value_error(bad):
    with pytest.raises(ValueError, match="randaugment"):
        RA.parse_randaugment(bad)


def test_good_settings_parse():
    assert RA.parse_randaugment(None) is None
    assert RA.parse_randaugment([2, 9]) == (2, 9) and RA.parse_randaugment((1, 0)) == (1, 0)
    assert RA.parse_randaugment([3, np.int64(30)]) == (3, 30)


# ---- seeding -----------------------------------------------------------------------------------------------
def test_the_same_seed_epoch_and_sample_give_the_same_augmentation():
    img = image(3, 32, 32)
    runs = [RA.rand_augment(img, 2, 15, RA.sample_rng(5, 3, 17)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    others = [RA.rand_augment(img, 2, 15, RA.sample_rng(5, e, 17)) for e in range(4, 12)]
    assert any(not torch.equal(o, runs[0]) for o in others)  # another epoch draws other ops
    others = [RA.rand_augment(img, 2, 15, RA.sample_rng(5, 3, p)) for p in range(18, 26)]
    assert any(not torch.equal(o, runs[0]) for o in others)  # and so does another sample


def test_ops_are_drawn_uniformly_with_replacement_at_the_one_magnitude(monkeypatch):
    calls = []
    monkeypatch.setattr(
        RA, "apply_op", lambda img, name, magnitude, sign: calls.append((name, magnitude, sign)) or img
    )
    for pos in range(700):
        RA.rand_augment(image(), 2, 7, RA.sample_rng(0, 0, pos))
    assert len(calls) == 1400 and {m for _, m, _ in calls} == {7}
    counts = np.array([sum(name == op for name, _, _ in calls) for op in RA.OPS])
    assert counts.min() > 50 and counts.max() < 150  # 100 expected per op
    assert {s for _, _, s in calls} == {1.0, -1.0}


# ---- loaders -----------------------------------------------------------------------------------------------
def test_webdataset_training_batches_with_randaugment(data_root):
    plain = make("webdataset", data_root)
    aug = make("webdataset", data_root, randaugment=[2, 15])
    assert aug.randaugment == (2, 15)
    a, p = next(iter(aug)), next(iter(plain))
    assert a["input"].shape == (8, 3, 16, 16) and a["input"].dtype == torch.float32
    assert torch.equal(a["index"], p["index"]) and torch.equal(a["label"], p["label"])
    assert not torch.equal(a["input"], p["input"])
    # the same (seed, epoch, position): the same sample, whichever loader or batch reads it
    again = make("webdataset", data_root, randaugment=[2, 15], batch_size=4)
    assert torch.equal(next(iter(again))["input"], a["input"][:4])
    x0, _, _ = aug._dataset[(0, 3, 3)]
    x0b, _, _ = again._dataset[(0, 3, 3)]
    x1, _, _ = aug._dataset[(1, 3, 3)]
    assert torch.equal(x0, x0b) and not torch.equal(x0, x1)


def test_webdataset_randaugment_is_the_same_after_resume(data_root):
    full = make("webdataset", data_root, randaugment=[2, 9])
    full.set_epoch(2)
    it = iter(full)
    next(it)
    state = full.state_dict()
    expected = next(it)["input"]
    resumed = make("webdataset", data_root, randaugment=[2, 9])
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(resumed))["input"], expected)


def test_epochs_differ(data_root):
    loader = make("webdataset", data_root, randaugment=[2, 9], shuffle=False)
    first = next(iter(loader))
    loader.set_epoch(1)
    second = next(iter(loader))
    assert torch.equal(first["index"], second["index"])  # same samples (no shuffle), other augmentations
    assert not torch.equal(first["input"], second["input"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_loaders_never_augment(backend, data_root):
    plain = next(iter(make(backend, data_root, split="val", train=False)))
    aug_loader = make(backend, data_root, split="val", train=False, randaugment=[3, 30])
    assert aug_loader.randaugment is None
    assert torch.equal(next(iter(aug_loader))["input"].cpu(), plain["input"].cpu())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dataset", "channels"), [("compass2d", 3), ("digits", 1)])
def test_every_backend_gives_augmented_batches_of_the_right_shape(backend, dataset, channels, data_root):
    loader = make(backend, data_root, dataset, randaugment=[2, 20])
    batches = [b for _, b in zip(range(2), loader)]
    for b in batches:
        assert b["input"].shape == (8, channels, 16, 16) and b["input"].dtype == torch.float32
        assert torch.isfinite(b["input"]).all()
    plain = next(iter(make(backend, data_root, dataset)))
    assert torch.equal(batches[0]["index"], plain["index"])
    assert not torch.equal(batches[0]["input"].cpu(), plain["input"].cpu())


@pytest.mark.parametrize("backend", ["webdataset", "ffcv"])
def test_each_sample_gets_its_own_seed_epoch_position_generator(backend, data_root, monkeypatch):
    """FFCV crops with its own random numbers; its RandAugment draws from the same per-sample generators as
    the webdataset backend's, so both pick the same ops for a sample."""
    require_backend(backend)
    seen = []
    original = RA.rand_augment

    def record(img, num_ops, magnitude, rng):
        seen.append((num_ops, magnitude, rng.bit_generator.state["state"]["state"]))
        return original(img, num_ops, magnitude, rng)

    monkeypatch.setattr(RA, "rand_augment", record)
    loader = make(backend, data_root, randaugment=[2, 9], seed=3)
    loader.set_epoch(4)
    next(iter(loader))
    expected = [
        (2, 9, RA.sample_rng(3, 4, int(p)).bit_generator.state["state"]["state"])
        for p in loader.positions(4)[:8]
    ]
    assert seen == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_volumes_and_video_are_refused(backend, data_root):
    with pytest.raises(ValueError, match=r"randaugment is defined on 2D images.*volume"):
        make(backend, data_root, "compass3d", image_size=8, randaugment=[2, 9])
    # evaluation ignores it, so one set of options serves both loaders
    assert (
        make(
            backend, data_root, "compass3d", split="val", train=False, image_size=8, randaugment=[2, 9]
        ).randaugment
        is None
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_settings_are_refused_by_every_backend(backend, data_root):
    with pytest.raises(ValueError, match="randaugment"):
        make(backend, data_root, randaugment=[2, 40])


def test_dali_converts_again_when_autograph_fails_once(data_root):
    """CPython 3.11 can fail an ast.parse that races another thread's (numba compiling for FFCV); DALI's
    AutoGraph then runs the graph unconverted. Simulated in a fresh process (conversions are cached)."""
    require("nvidia.dali")
    script = f"""
import gast
from pipelines import build_loader
real, failures = gast.parse, [SystemError("AST constructor recursion depth mismatch (simulated)")]
def parse(*args, **kwargs):
    if failures:
        raise failures.pop()
    return real(*args, **kwargs)
gast.parse = parse
loader = build_loader("dali", root={str(data_root)!r}, dataset="compass2d", split="train", batch_size=4,
                      train=True, image_size=16, workers=1, randaugment=[2, 9])
assert next(iter(loader))["input"].shape == (4, 3, 16, 16)
assert not failures
print("converted")
"""
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert done.returncode == 0 and "converted" in done.stdout, done.stderr[-2000:]
    assert "converting again" in done.stderr
