"""RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a reduced
search space", arXiv 1909.13719) on uint8 (C, H, W) image tensors, in torch.

Each training image gets `num_ops` operations drawn uniformly, with replacement, from the paper's 14
(`OPS`), every one applied (as in the paper; timm applies each with probability 1/2) at the same
global magnitude M.

Magnitude convention: M is an integer in 0..30 (`MAX_MAGNITUDE`) and each op acts with strength
M / 30 of its maximum, the maximum being the AutoAugment range the paper reuses; every op grows
stronger with M. This is DALI's `rand_augment` convention (31 magnitude bins), which the DALI backend
uses. timm/DeiT count on a 0-10 scale with 10 at the maximum, so their M = 9 (DeiT's
rand-m9-mstd0.5-inc1) is about M = 27 here, and M = 9 here is a third of the maximum. With s = M / 30:

    rotate        angle s * 30 degrees           shear_x/y     factor s * 0.3
    translate_x/y s * 0.45 of the width/height (whole pixels; 150 px of 331 in AutoAugment)
    brightness, color (saturation), contrast, sharpness   enhance factor 1 +- s * 0.9 (PIL's ImageEnhance)
    posterize     keep 8 - round(4 s) bits       solarize      invert pixels >= 256 - 256 s
    identity, autocontrast, equalize             no magnitude

The geometric and enhance ops take a random sign (probability 1/2), as the paper's implementation does
for the geometric ops and timm's "increasing" variant (DeiT's inc1) for the enhance ops. The geometric
ops sample bilinearly around the image center and fill uncovered pixels with gray (128). M = 0 leaves
every op but autocontrast and equalize an exact identity. `color` is the identity on 1-channel images.

Randomness comes only from the numpy generator passed in: the loaders derive it from (seed, epoch,
sample position), so an augmented sample is reproducible and the same after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "posterize",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
MAX_MAGNITUDE = 30
FILL = 128.0
# the stream of a sample's generator reserved for RandAugment: np.random.default_rng([seed, epoch, pos, RNG_STREAM])
RNG_STREAM = 0x5241

_MAX_ROTATE_DEG = 30.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE = 0.45
_MAX_ENHANCE = 0.9
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


def parse_randaugment(value: Sequence[int] | None) -> tuple[int, int] | None:
    """None, or [num_ops, magnitude] with integers num_ops >= 1 and 0 <= magnitude <= 30 -> a tuple."""
    if value is None:
        return None
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    if ok:
        n, m = value
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (n, m))
        ok = ok and n >= 1 and 0 <= m <= MAX_MAGNITUDE
    if not ok:
        raise ValueError(
            f"randaugment must be None or [num_ops, magnitude] with integers num_ops >= 1 and "
            f"0 <= magnitude <= {MAX_MAGNITUDE}, got {value!r}"
        )
    return int(value[0]), int(value[1])


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The RandAugment generator of one sample: its own stream of the loaders' (seed, epoch, position)
    seeding, so the webdataset and FFCV backends draw the same ops and signs for a sample."""
    return np.random.default_rng([seed, epoch, position, RNG_STREAM])


def rand_augment(img: torch.Tensor, num_ops: int, magnitude: int, rng: np.random.Generator) -> torch.Tensor:
    """Apply `num_ops` ops drawn from OPS with `rng`, each at `magnitude` (0..30), to a uint8 (C, H, W) image."""
    choices = rng.integers(0, len(OPS), size=num_ops)
    signs = np.where(rng.random(num_ops) < 0.5, -1.0, 1.0)
    for k, sign in zip(choices, signs):
        img = apply_op(img, OPS[int(k)], magnitude, float(sign))
    return img


def apply_op(img: torch.Tensor, name: str, magnitude: float, sign: float = 1.0) -> torch.Tensor:
    """One op at `magnitude` (0..30; `sign` +1 or -1 picks the direction of the signed ops) on uint8 (C, H, W)."""
    if img.dtype != torch.uint8 or img.ndim != 3:
        raise TypeError(f"RandAugment works on uint8 (C, H, W) images, got {img.dtype} {tuple(img.shape)}")
    if name not in _OP_FUNCS:
        raise ValueError(f"unknown RandAugment op {name!r}; the ops are {OPS}")
    s = float(magnitude) / MAX_MAGNITUDE
    return _OP_FUNCS[name](img, s, sign)


# ---- pixel ops ---------------------------------------------------------------------------------------
def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """float (C, H, W) -> (1, H, W) luma (the channel itself for 1-channel images)."""
    if x.shape[0] == 1:
        return x
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype).view(3, 1, 1)
    return (x[:3] * w).sum(0, keepdim=True)


def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (img - degenerate), factor 1 = img."""
    x = img.to(torch.float32)
    return _to_uint8(degenerate + factor * (x - degenerate))


def _identity(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    return img


def _autocontrast(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    """Stretch each channel's [min, max] to [0, 255] (constant channels stay as they are)."""
    x = img.to(torch.float32)
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    scale = torch.where(span > 0, 255.0 / span.clamp(min=1.0), torch.ones_like(span))
    offset = torch.where(span > 0, lo, torch.zeros_like(lo))
    return _to_uint8((x - offset) * scale)


def _equalize(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    """Histogram equalization per channel, by the rule of PIL's ImageOps.equalize: the lookup maps level i to
    (step // 2 + #pixels below i) // step, step = (#pixels - #pixels at the top occupied level) // 255."""
    out = torch.empty_like(img)
    for c in range(img.shape[0]):
        ch = img[c].reshape(-1)
        hist = torch.bincount(ch.to(torch.int64), minlength=256)
        occupied = torch.nonzero(hist).flatten()
        step = (int(hist.sum()) - int(hist[occupied[-1]])) // 255
        if step == 0:  # one level, or too few pixels to spread
            out[c] = img[c]
            continue
        below = torch.cumsum(hist, 0) - hist
        lut = ((below + step // 2) // step).clamp_(0, 255).to(torch.uint8)
        out[c] = lut[ch.to(torch.int64)].view_as(img[c])
    return out


def _solarize(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    threshold = 256.0 - 256.0 * s
    return torch.where(img.to(torch.float32) >= threshold, 255 - img, img)


def _posterize(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    drop = round(4 * s)
    if drop == 0:
        return img
    return img & (0xFF << drop & 0xFF)


def _factor(s: float, sign: float) -> float:
    return 1.0 + sign * _MAX_ENHANCE * s


def _brightness(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    return img if s == 0 else _blend(torch.zeros(()), img, _factor(s, sign))


def _color(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    if s == 0 or img.shape[0] == 1:
        return img
    return _blend(_gray(img.to(torch.float32)), img, _factor(s, sign))


def _contrast(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    if s == 0:
        return img
    mean = torch.floor(_gray(img.to(torch.float32)).mean() + 0.5)
    return _blend(mean, img, _factor(s, sign))


def _sharpness(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3, center weight 5 of 13); the one-pixel border is left as it is."""
    if s == 0 or min(img.shape[1:]) < 3:
        return img
    x = img.to(torch.float32)
    smooth = x.clone()
    # 3x3 window sum plus 4 more of the center pixel, over 13
    window = F.avg_pool2d(x[None], 3, stride=1)[0] * 9.0
    smooth[:, 1:-1, 1:-1] = ((window + 4.0 * x[:, 1:-1, 1:-1]) / 13.0).round_()
    return _blend(smooth, img, _factor(s, sign))


# ---- geometric ops -----------------------------------------------------------------------------------
def _warp(
    img: torch.Tensor, matrix: tuple[float, float, float, float], shift: tuple[float, float]
) -> torch.Tensor:
    """Output pixel p (x, y, pixel units) reads input c + A (p - c) - shift, c the image center, bilinear,
    gray outside the image."""
    _, h, w = img.shape
    a, b, c_, d = matrix
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32) - cy, torch.arange(w, dtype=torch.float32) - cx, indexing="ij"
    )
    src_x = a * xs + b * ys + cx - shift[0]
    src_y = c_ * xs + d * ys + cy - shift[1]
    grid = torch.stack(((2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1), dim=-1)[None]
    x = img.to(torch.float32)[None] - FILL  # zero padding of (x - fill) = padding with the fill value
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return _to_uint8(out + FILL)


def _rotate(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    angle = math.radians(sign * _MAX_ROTATE_DEG * s)
    if angle == 0:
        return img
    cos, sin = math.cos(angle), math.sin(angle)
    return _warp(img, (cos, -sin, sin, cos), (0.0, 0.0))


def _shear_x(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    k = sign * _MAX_SHEAR * s
    return img if k == 0 else _warp(img, (1.0, k, 0.0, 1.0), (0.0, 0.0))


def _shear_y(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    k = sign * _MAX_SHEAR * s
    return img if k == 0 else _warp(img, (1.0, 0.0, k, 1.0), (0.0, 0.0))


def _translate_x(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    dx = round(sign * _MAX_TRANSLATE * s * img.shape[2])
    return img if dx == 0 else _warp(img, (1.0, 0.0, 0.0, 1.0), (float(dx), 0.0))


def _translate_y(img: torch.Tensor, s: float, sign: float) -> torch.Tensor:
    dy = round(sign * _MAX_TRANSLATE * s * img.shape[1])
    return img if dy == 0 else _warp(img, (1.0, 0.0, 0.0, 1.0), (0.0, float(dy)))


_OP_FUNCS = {
    "identity": _identity,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "rotate": _rotate,
    "solarize": _solarize,
    "color": _color,
    "posterize": _posterize,
    "contrast": _contrast,
    "brightness": _brightness,
    "sharpness": _sharpness,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}
assert tuple(_OP_FUNCS) == OPS
