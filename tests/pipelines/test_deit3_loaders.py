"""DeiT III's data parts through every backend, on real shards: 3-Augment (one op per image, each with probability
1/3), repeated augmentation (the same order on the three backends, disjoint slots per rank, each copy augmented
differently, exact resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import make_loader

from pipelines import BACKENDS
from pipelines.loaders.repeated import repeated_positions


def _pixels(loader, batch) -> torch.Tensor:
    """The uint8 pixels of a normalized batch (normalization undone; exact up to float rounding)."""
    shape = (1, -1, 1, 1)
    x = batch["input"] * (loader.std * 255).view(shape) + (loader.mean * 255).view(shape)
    return x.round().clamp(0, 255).to(torch.int16)


def _train(backend, root, **kw):
    options = dict(
        batch_size=50, train=True, image_size=24, workers=1, seed=3, crop_scale=(1.0, 1.0), flip=False
    )
    return make_loader(backend, root, "compass2d", "train", **{**options, **kw})


def _classify(ref: torch.Tensor, out: torch.Tensor) -> str:
    """Which 3-Augment op made `out` from `ref` (C, H, W): grayscale (equal channels), solarization (exactly
    PIL's), else blur (a blur never adds variation: checked)."""
    if torch.equal(out[0], out[1]) and torch.equal(out[1], out[2]):
        return "grayscale"
    if torch.equal(out, torch.where(ref >= 128, 255 - ref, ref)):
        return "solarize"
    tv = lambda x: (x[:, 1:] - x[:, :-1]).abs().sum() + (x[:, :, 1:] - x[:, :, :-1]).abs().sum()  # noqa: E731
    return "blur" if tv(out.float()) <= tv(ref.float()) + 1 else "unknown"


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_augment_applies_each_op_with_probability_one_third(backend, data_root):
    # whole-image crops (scale 1 on square images: every backend falls back to the full image), no flips: the
    # reference loader gives each image as 3-Augment received it
    ref, aug = _train(backend, data_root), _train(backend, data_root, three_augment=True)
    counts = dict.fromkeys(("grayscale", "solarize", "blur", "unknown"), 0)
    for epoch in range(2):
        ref.set_epoch(epoch)
        aug.set_epoch(epoch)
        for rb, ab in zip(ref, aug):
            assert torch.equal(rb["index"], ab["index"])
            r, a = _pixels(ref, rb), _pixels(aug, ab)
            for i in range(len(r)):
                counts[_classify(r[i], a[i])] += 1
    n = sum(counts.values())
    assert n == 600 and counts["unknown"] == 0, counts
    for op in (
        "grayscale",
        "solarize",
        "blur",
    ):  # fixed seeds: deterministic; 3 sigma of binomial(600, 1/3): 0.058
        assert abs(counts[op] / n - 1 / 3) < 0.06, (backend, counts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_color_jitter_changes_colours_within_its_range(backend, data_root):
    ref, jit = _train(backend, data_root), _train(backend, data_root, color_jitter=0.3)
    r, j = _pixels(ref, next(iter(ref))).float(), _pixels(jit, next(iter(jit))).float()
    assert not torch.equal(r, j)
    # brightness alone scales the mean by U[0.7, 1.3]; contrast and saturation keep it (up to clipping)
    ratio = j.mean(dim=(1, 2, 3)) / r.mean(dim=(1, 2, 3))
    assert float(ratio.min()) > 0.6 and float(ratio.max()) < 1.4 and float(ratio.std()) > 0.05


def _index_of_position(root) -> np.ndarray:
    """The split's sample index at each position (evaluation reads the split in order)."""
    lo = make_loader(
        "webdataset", root, "compass2d", "train", batch_size=100, train=False, image_size=24, workers=0
    )
    return torch.cat([b["index"] for b in lo]).numpy()


def _epoch(loader):
    idx, xs = [], []
    for b in loader:
        idx.append(b["index"])
        xs.append(b["input"])
    return torch.cat(idx).numpy(), torch.cat(xs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_augmentation_order_disjoint_slots_copies_and_resume(backend, data_root):
    index_of = _index_of_position(data_root)
    n, world, repeats = len(index_of), 2, 3
    ra = dict(
        batch_size=10,
        image_size=16,
        crop_scale=(0.08, 1.0),
        flip=True,
        world_size=world,
        repeated_aug=repeats,
    )
    per_rank, colour = [], dict(three_augment=True, color_jitter=0.3)
    for rank in range(world):
        lo = _train(backend, data_root, rank=rank, **ra, **colour)
        idx, x = _epoch(lo)
        # the same samples in the same order on every backend: DeiT's RASampler order, slot by slot
        want = index_of[repeated_positions(n, epoch=0, seed=3, rank=rank, world_size=world, repeats=repeats)]
        assert np.array_equal(idx, want[: len(idx)]) and len(idx) == (n // world) // 10 * 10
        # a sample's copies in this rank (slots s and s + 2 of its 3): each augmented its own way
        dup = [
            (i, j) for i in range(len(idx)) for j in range(i + 1, min(i + 3, len(idx))) if idx[i] == idx[j]
        ]
        assert len(dup) > 20 and all(not torch.equal(x[i], x[j]) for i, j in dup)
        per_rank.append(idx)
    # the ranks' slots interleave into the repeated order: none read twice, none left out
    woven = np.stack(per_rank, axis=1).reshape(-1)
    full = np.repeat(index_of[np.random.default_rng([3, 0]).permutation(n)], repeats)
    assert np.array_equal(woven, full[: len(woven)])
    # resume rank 1 after 4 batches: the rest of the epoch exactly (pixels too where all draws are ours: webdataset)
    resumed = _train(backend, data_root, rank=1, **ra, **colour)
    resumed.load_state_dict({**lo.state_dict(), "epoch": 0, "batches": 4})
    ridx, rx = _epoch(resumed)
    assert np.array_equal(ridx, idx[40:])
    if backend == "webdataset":
        assert torch.equal(rx, x[40:])
    with pytest.raises(ValueError, match="repeated_aug"):
        _train(backend, data_root, rank=1, **{**ra, "repeated_aug": 1}).load_state_dict(lo.state_dict())


def test_refusals_name_the_key_and_value(data_root):
    with pytest.raises(ValueError, match=r"repeated_aug must be an integer >= 1.*got 0"):
        _train("webdataset", data_root, repeated_aug=0)
    with pytest.raises(ValueError, match=r"color_jitter must be in \[0, 1\].*1.5"):
        _train("webdataset", data_root, color_jitter=1.5)
    with pytest.raises(ValueError, match="three_augment is defined on 2D images"):
        make_loader(
            "webdataset", data_root, "compass3d", "train", batch_size=8, train=True, three_augment=True
        )
    # evaluation never augments nor repeats
    lo = make_loader("webdataset", data_root, "compass2d", "val", batch_size=8, train=False, repeated_aug=3,
                     three_augment=True, color_jitter=0.3)  # fmt: skip
    assert (lo.repeated_aug, lo.three_augment, lo.color_jitter) == (1, False, 0.0)
