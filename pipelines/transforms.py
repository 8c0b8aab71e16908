"""Torch-only image and volume operations shared by the loaders: crops, flips, normalization, mixup/cutmix.

Geometry is computed with numpy generators seeded per (seed, epoch, sample), so augmentations are
reproducible; pixel work happens in torch on uint8 or float tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering `scale` of the area with aspect in `ratio` (Szegedy et al. 2015,
    "Going deeper with convolutions", the Inception crop); falls back to a center crop after 10 tries."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, crop_ratio: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centered square of side crop_ratio * min(height, width)."""
    side = max(1, round(crop_ratio * min(height, width)))
    return (height - side) // 2, (width - side) // 2, side, side


def pad_crop_draws(rng: np.random.Generator, pad: int, flip: bool) -> tuple[int, int, bool]:
    """(top, left, mirror) of torchvision's RandomCrop(size, padding=pad) then RandomHorizontalFlip on an image of
    `size`: the crop's corner in the padded image, uniform in [0, 2 pad] per axis (a shift of top - pad, left -
    pad), and a flip with probability 1/2 (drawn either way; False unless ``flip``)."""
    top, left = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    return top, left, bool(rng.random() < 0.5) and flip


def padded_random_crop(img: torch.Tensor, pad: int, draws: tuple[int, int, bool]) -> torch.Tensor:
    """(C, H, W) -> (C, H, W): zero-pad `pad` pixels on every side (in pixel space, before normalization), crop
    H x W at (top, left) of `draws` (pad_crop_draws), then flip left-right if it says so. No resize."""
    top, left, mirror = draws
    h, w = img.shape[-2:]
    out = F.pad(img, (pad, pad, pad, pad))[..., top : top + h, left : left + w]
    return out.flip(-1) if mirror else out.contiguous()


def default_crop_ratio(image_size: int) -> float:
    """Evaluation crop: 0.875 (resize 256, crop 224; Krizhevsky et al. 2012 / DeiT) for large inputs, none for small."""
    return 0.875 if image_size >= 128 else 1.0


def as_size(image_size: int | tuple[int, ...] | list[int], rank: int) -> tuple[int, ...]:
    """Expand an int to `rank` equal sides; check a tuple has `rank` entries."""
    if isinstance(image_size, int):
        return (image_size,) * rank
    size = tuple(int(v) for v in image_size)
    if len(size) != rank:
        raise ValueError(f"image_size {image_size} has {len(size)} entries, the data has {rank} spatial axes")
    return size


def normalize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 or float pixels in [0, 255] -> float32 (x / 255 - mean) / std, per channel (dim 1)."""
    shape = (1, -1) + (1,) * (batch.ndim - 2)
    x = batch.to(torch.float32, copy=True)  # always a new tensor: loaders may hand in reused buffers
    return x.sub_((mean * 255.0).view(shape)).mul_((1.0 / (std * 255.0)).view(shape))


def crop_volume(
    vol: torch.Tensor, size: tuple[int, int, int], rng: np.random.Generator | None
) -> torch.Tensor:
    """Random (rng given) or center crop of a (C, D, H, W) volume to `size`, zero-padding axes that are smaller."""
    pads = []
    for have, want in zip(reversed(vol.shape[1:]), reversed(size)):
        extra = max(0, want - have)
        pads += [extra // 2, extra - extra // 2]
    if any(pads):
        vol = F.pad(vol, pads)
    slices = [slice(None)]
    for have, want in zip(vol.shape[1:], size):
        start = int(rng.integers(0, have - want + 1)) if rng is not None else (have - want) // 2
        slices.append(slice(start, start + want))
    return vol[tuple(slices)]


def resize_volume(vol: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of a (C, D, H, W) volume; returns float32 in the input's value range."""
    if tuple(vol.shape[1:]) == tuple(size):
        return vol
    out = F.interpolate(vol[None].to(torch.float32), size=size, mode="trilinear", align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(vol.dtype) if vol.dtype == torch.uint8 else out


def volume_transform(
    vol: torch.Tensor,
    size: tuple[int, int, int],
    train: bool,
    rng: np.random.Generator,
    *,
    eval_crop_ratio: float = 1.0,
    flip: bool = True,
) -> torch.Tensor:
    """Training: random crop to `size` (after an upscale if the volume is smaller) and (``flip``) a random
    flip of the last (left-right) axis. Evaluation: resize to size / eval_crop_ratio, then center crop to `size`."""
    if train:
        scale = max(s / h for s, h in zip(size, vol.shape[1:]))
        if scale > 1:
            vol = resize_volume(vol, tuple(max(s, math.ceil(h * scale)) for s, h in zip(size, vol.shape[1:])))
        vol = crop_volume(vol, size, rng)
        if rng.random() < 0.5 and flip:  # drawn either way: the other draws stay the same
            vol = vol.flip(-1)
        return vol
    vol = resize_volume(vol, tuple(round(s / eval_crop_ratio) for s in size))
    return crop_volume(vol, size, None)


def mix_batch(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    generator: np.random.Generator,
    *,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with its reverse; returns the
    mixed inputs and soft targets (B, num_classes). `mixup`/`cutmix` are the Beta(alpha, alpha) parameters
    (0: off); when both are set, each batch picks one at random. CutMix cuts one box across every spatial
    axis (2D or 3D) and corrects lambda to its area."""
    off = label_smoothing / num_classes
    targets = F.one_hot(labels, num_classes).to(torch.float32) * (1.0 - label_smoothing) + off
    use_cutmix = cutmix > 0 and (mixup <= 0 or generator.random() < 0.5)
    if not use_cutmix and mixup <= 0:
        return inputs, targets
    alpha = cutmix if use_cutmix else mixup
    lam = float(generator.beta(alpha, alpha))
    flipped = inputs.flip(0)
    if use_cutmix:
        spatial = inputs.shape[2:]
        side = (1.0 - lam) ** (1.0 / len(spatial))
        box = []
        for n in spatial:
            cut = round(n * side)
            centre = int(generator.integers(0, n))
            box.append(slice(max(0, centre - cut // 2), min(n, centre - cut // 2 + cut)))
        mixed = inputs.clone()
        region = (slice(None), slice(None), *box)
        mixed[region] = flipped[region]
        cut_volume = math.prod(s.stop - s.start for s in box)
        lam = 1.0 - cut_volume / math.prod(spatial)
    else:
        mixed = inputs * lam + flipped * (1.0 - lam)
    return mixed, targets * lam + targets.flip(0) * (1.0 - lam)


# ---- 3-Augment (DeiT III: Touvron, Cord and Jegou, ECCV 2022; facebookresearch/deit augment.py) ----
THREE_AUGMENT_OPS = ("grayscale", "solarize", "blur")
AUGMENT_STREAM = (
    0x3A4A  # the stream of 3-Augment and colour jitter draws, apart from the crop's and RandAugment's
)


def augment_rng(seed: int, epoch: int, key: int) -> np.random.Generator:
    """The generator of one sample's 3-Augment and colour jitter: keyed like the crop, by (seed, epoch, key), where
    key is the sample's position, or with repeated augmentation its slot (Loader.sample_keys: each copy its own)."""
    return np.random.default_rng([seed, epoch, key, AUGMENT_STREAM])


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float RGB -> (1, H, W) luma with PIL's ITU-R 601-2 weights (torchvision's Grayscale)."""
    if x.shape[0] == 1:
        return x
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) float image, reflect-padded, kernel 2 ceil(3 sigma) + 1."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[0]
    pad_h, pad_w = min(radius, x.shape[1] - 1), min(radius, x.shape[2] - 1)
    y = F.pad(x[None], (pad_w, pad_w, pad_h, pad_h), mode="reflect" if min(pad_h, pad_w) > 0 else "replicate")
    kh = k[radius - pad_h : radius + pad_h + 1].view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = k[radius - pad_w : radius + pad_w + 1].view(1, 1, 1, -1).expand(c, 1, 1, -1)
    return F.conv2d(F.conv2d(y, kh, groups=c), kw, groups=c)[0]


def color_jitter(x: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """torchvision's ColorJitter(strength, strength, strength) (no hue): brightness, contrast and
    saturation factors from U[1 - s, 1 + s], applied in a random order, on (C, H, W) floats in [0, 255]."""
    factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)
    for op in rng.permutation(3):
        f = float(factors[op])
        if op == 0:  # brightness: blend with black
            x = (x * f).clamp_(0, 255)
        elif op == 1:  # contrast: blend with the mean luma
            x = (x * f + (1 - f) * _gray(x).mean()).clamp_(0, 255)
        elif x.shape[0] == 3:  # saturation: blend with the luma image
            x = (x * f + (1 - f) * _gray(x)).clamp_(0, 255)
    return x


def three_augment(
    img: torch.Tensor, rng: np.random.Generator, color_jitter_strength: float = 0.3
) -> torch.Tensor:
    """DeiT III's 3-Augment on one uint8 (C, H, W) image, after the crop and flip: one of grayscale
    (kept 3-channel), solarization (PIL's threshold 128) or Gaussian blur (sigma ~ U(0.1, 2)), each
    with probability 1/3 (``transforms.RandomChoice``, augment.py:111-113), then colour jitter
    (augment.py:115-116; 0: off). Returns uint8 (C, H, W)."""
    op = THREE_AUGMENT_OPS[int(rng.integers(0, 3))]
    sigma = float(rng.uniform(0.1, 2.0))  # drawn whichever op: the later draws stay the same
    x = img.to(torch.float32)
    if op == "grayscale":
        x = _gray(x).expand_as(x).clone()
    elif op == "solarize":
        x = torch.where(x >= 128, 255 - x, x)
    else:
        x = gaussian_blur(x, sigma)
    if color_jitter_strength > 0:
        x = color_jitter(x, color_jitter_strength, rng)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def pixel_augment(img: torch.Tensor, rng: np.random.Generator, *, three: bool, jitter: float) -> torch.Tensor:
    """The colour stage after crop, flip and RandAugment on one uint8 (C, H, W) image: 3-Augment followed by colour
    jitter of strength ``jitter`` (``three``), or the jitter alone; the image itself when both are off."""
    if three:
        return three_augment(img, rng, jitter)
    if jitter <= 0:
        return img
    return color_jitter(img.to(torch.float32), jitter, rng).round_().clamp_(0, 255).to(torch.uint8)
