"""3-Augment: one op per image, each with probability 1/3, the ops as DeiT III's, seeded."""

from __future__ import annotations

import numpy as np
import torch

from pipelines import transforms as T


def _image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8)


def _which(img, out):
    x = img.float()
    if torch.equal(out[0], out[1]) and torch.equal(out[1], out[2]):
        return "grayscale"
    if torch.equal(out.float(), torch.where(x >= 128, 255 - x, x)):
        return "solarize"
    return "blur"


def test_each_op_with_probability_one_third():
    img = _image()
    counts = {op: 0 for op in T.THREE_AUGMENT_OPS}
    n = 1500
    for i in range(n):
        counts[_which(img, T.three_augment(img, np.random.default_rng([1, i]), 0.0))] += 1
    for op, c in counts.items():
        assert abs(c / n - 1 / 3) < 0.04, (op, counts)  # 3 sigma of a binomial(1500, 1/3): 0.037


def test_ops_are_the_published_ones():
    img = _image()
    x = img.float()
    luma = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).round()
    out = None
    for i in range(50):
        out = T.three_augment(img, np.random.default_rng([2, i]), 0.0)
        if _which(img, out) == "grayscale":
            break
    assert torch.allclose(out[0].float(), luma, atol=1)
    blurred = T.gaussian_blur(x, 1.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    flat = torch.full((3, 8, 8), 100.0)
    assert torch.allclose(T.gaussian_blur(flat, 2.0), flat)


def test_color_jitter_ranges_and_seeding():
    img = _image()
    a = T.three_augment(img, np.random.default_rng([3, 0]), 0.3)
    b = T.three_augment(img, np.random.default_rng([3, 0]), 0.3)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == img.shape
    flat = torch.full((3, 4, 4), 100.0)
    for i in range(200):  # brightness/contrast/saturation of a flat grey image: within 100 * [0.7, 1.3]^3
        v = T.color_jitter(flat.clone(), 0.3, np.random.default_rng([4, i]))
        assert 100 * 0.7**3 - 1e-3 <= v.min() and v.max() <= 100 * 1.3**3 + 1e-3
