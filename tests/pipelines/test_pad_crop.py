"""The padded random crop (data.pad_crop, torchvision's RandomCrop(size, padding=p) then the flip) on every backend,
on real shards: each crop is the image shifted by (dy, dx) in [-p, p] with zeros where it falls outside, the offsets
spread over the whole range, the same draws for the same sample on all three backends, and an exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import make_loader

from pipelines import BACKENDS

PAD, SIZE = 4, 24


def _pixels(loader, batch) -> torch.Tensor:
    """The uint8 pixels of a normalized batch (normalization undone; exact up to float rounding)."""
    shape = (1, -1, 1, 1)
    x = batch["input"] * (loader.std * 255).view(shape) + (loader.mean * 255).view(shape)
    return x.round().clamp(0, 255).to(torch.int16)


def _loader(backend, root, **kw):
    options = dict(batch_size=50, train=True, image_size=SIZE, workers=1, seed=3, pad_crop=PAD, flip=True)
    return make_loader(backend, root, "compass2d", "train", **{**options, **kw})


def _epoch(loader) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    idx, labels, xs = [], [], []
    for b in loader:
        assert b["input"].shape == (50, 3, SIZE, SIZE)
        idx.append(b["index"])
        labels.append(b["label"])
        xs.append(_pixels(loader, b))
    return torch.cat(idx).numpy(), torch.cat(labels).numpy(), torch.cat(xs)


def _references(backend, root) -> dict[int, torch.Tensor]:
    """Each image as evaluation (crop ratio 1: the whole image) gives it, by sample index."""
    lo = _loader(backend, root, train=False, eval_crop_ratio=1.0)
    return {int(i): x for b in lo for i, x in zip(b["index"], _pixels(lo, b))}


def _offset(ref: torch.Tensor, out: torch.Tensor) -> tuple[int, int, int]:
    """The one (dy, dx, mirror) with out == flip?(ref shifted by (dy, dx), zeros outside): out[i, j] = ref[i + dy,
    j + dx]. Exactly one candidate of the 2 x 81 must match exactly (the noise background makes shifts distinct)."""
    padded = torch.nn.functional.pad(ref, (PAD, PAD, PAD, PAD))
    windows = padded.unfold(1, SIZE, 1).unfold(2, SIZE, 1)  # (C, 2P+1, 2P+1, SIZE, SIZE)
    hits = []
    for mirror, target in ((0, out), (1, out.flip(-1))):
        err = (windows - target[:, None, None]).abs().amax(dim=(0, 3, 4))  # (2P+1, 2P+1)
        hits += [
            (int(t) - PAD, int(u) - PAD, mirror) for t, u in zip(*torch.nonzero(err == 0, as_tuple=True))
        ]
    assert len(hits) == 1, hits
    return hits[0]


def test_pad_crop_is_a_zero_padded_shift_alike_on_every_backend(data_root):
    runs = {}
    for backend in BACKENDS:
        ref = _references(backend, data_root)
        idx, labels, x = _epoch(_loader(backend, data_root))
        offsets = np.array([_offset(ref[int(i)], xi) for i, xi in zip(idx, x)])  # (300, 3): dy, dx, mirror
        for axis in (0, 1):  # every shift of [-4, 4] on both axes, about uniformly (expected 33 of 300 each)
            counts = np.bincount(offsets[:, axis] + PAD, minlength=2 * PAD + 1)
            assert len(counts) == 2 * PAD + 1 and counts.min() >= 15, (backend, axis, counts)
        assert 0.4 < offsets[:, 2].mean() < 0.6, backend  # flips with probability 1/2
        runs[backend] = idx, labels, offsets
    # the same samples in the same order, the same labels, the same crop and flip of each on the three backends
    idx, labels, offsets = runs["webdataset"]
    for backend in BACKENDS[1:]:
        assert np.array_equal(runs[backend][0], idx) and np.array_equal(runs[backend][1], labels), backend
        assert np.array_equal(runs[backend][2], offsets), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_pad_crop_resumes_exactly_and_draws_anew_each_epoch(backend, data_root):
    lo = _loader(backend, data_root)
    idx, _, x = _epoch(lo)
    resumed = _loader(backend, data_root)
    resumed.load_state_dict({**lo.state_dict(), "epoch": 0, "batches": 2})
    ridx, _, rx = _epoch(resumed)
    assert np.array_equal(ridx, idx[100:]) and torch.equal(rx, x[100:])
    # epoch 1 (whatever order): another crop for most samples
    lo.set_epoch(1)
    idx1, _, x1 = _epoch(lo)
    first = {int(i): xi for i, xi in zip(idx, x)}
    same = sum(torch.equal(first[int(i)], xi) for i, xi in zip(idx1, x1))
    assert same < 0.1 * len(idx1)


def test_pad_crop_refusals_and_evaluation(data_root):
    with pytest.raises(ValueError, match=r"pad_crop must be an integer >= 0.*got -1"):
        _loader("webdataset", data_root, pad_crop=-1)
    with pytest.raises(ValueError, match="pad_crop is defined on 2D images"):
        make_loader("webdataset", data_root, "compass3d", "train", batch_size=8, train=True, pad_crop=4)
    assert _loader("webdataset", data_root, train=False).pad_crop == 0  # evaluation never pads
    from liere.engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"data.pad_crop=-2: expected pixels"):
        load_config("configs/digits.yaml", ["data.pad_crop=-2"])


def test_cifar100_paper_recipe_runs_the_padded_crop():
    from pathlib import Path

    from liere.engine.config import load_config

    path = "configs/cifar100/paper_vit_b.yaml"
    assert load_config(path).data.pad_crop == 4
    assert "substitute" not in Path(path).read_text()
