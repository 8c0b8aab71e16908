"""LAMB, binary cross-entropy and the warmup from a floor (issue 13, DeiT III's recipe)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from liere.engine.optim import Lamb, build_scheduler, lr_factor


def test_lamb_first_step_by_hand():
    """At t = 1 the bias-corrected moments are g and g^2: u = g / (|g| + eps) + wd p, r = ||p|| / ||u||."""
    p = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
    p.grad = torch.tensor([0.5, 2.0])
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
    opt.step()
    u = [0.5 / (0.5 + 1e-6) + 0.1 * 3.0, 2.0 / (2.0 + 1e-6) + 0.1 * -4.0]  # [1.3, 0.6]
    r = 5.0 / math.hypot(*u)
    expected = [3.0 - 0.1 * r * u[0], -4.0 - 0.1 * r * u[1]]
    assert p.detach().tolist() == pytest.approx(expected, rel=1e-6)


def test_lamb_second_step_and_no_ratio_without_decay():
    """Two steps with moments by hand; a tensor without weight decay (norms, biases) has r = 1."""
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = Lamb([p], lr=0.01, betas=(0.5, 0.75), eps=0.0, weight_decay=0.0)
    grads = [torch.tensor([1.0, -1.0]), torch.tensor([3.0, 1.0])]
    want = [1.0, 2.0]
    m, v = [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(grads, start=1):
        p.grad = g
        opt.step()
        for i in range(2):
            m[i] = 0.5 * m[i] + 0.5 * g[i].item()
            v[i] = 0.75 * v[i] + 0.25 * g[i].item() ** 2
            want[i] -= 0.01 * (m[i] / (1 - 0.5**t)) / math.sqrt(v[i] / (1 - 0.75**t))
    assert p.detach().tolist() == pytest.approx(want, rel=1e-6)


def test_lamb_trains_a_tiny_model():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 2))
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = Lamb([{"params": decay, "weight_decay": 0.01}, {"params": rest}], lr=0.02)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_bce_binarizes_mixed_targets():
    from liere.engine.trainer import binary_cross_entropy

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    mixed = {"target": torch.tensor([[0.7, 0.0, 0.3]]), "label": torch.tensor([0])}
    want = F.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0.0, 1.0]]))
    assert binary_cross_entropy(logits, mixed, "cpu").item() == pytest.approx(want.item())
    plain = {"label": torch.tensor([2])}
    manual = -(math.log(1 - 1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(1.0)))
               + math.log(1 / (1 + math.exp(-0.5)))) / 3  # fmt: skip
    assert binary_cross_entropy(logits, plain, "cpu").item() == pytest.approx(manual, rel=1e-6)


def test_warmup_from_a_floor():
    """timm's warmup: warmup_lr at step 0, linear to lr at the end of the warmup (DeiT --warmup-lr 1e-6)."""
    lr, floor, warm = 4e-3, 1e-6, 10
    assert lr * lr_factor(0, 100, warm, "cosine", 0.0, warmup_ratio=floor / lr) == pytest.approx(floor)
    assert lr * lr_factor(5, 100, warm, "cosine", 0.0, warmup_ratio=floor / lr) == pytest.approx(
        floor + (lr - floor) / 2
    )
    assert lr_factor(warm, 100, warm, "cosine", 0.0, warmup_ratio=floor / lr) == pytest.approx(1.0)
    assert lr_factor(0, 100, warm, "cosine", 0.0) == pytest.approx(1 / warm)  # the former rule unchanged
    cfg = OmegaConf.create(dict(lr=lr, min_lr=1e-5, warmup_lr=floor, schedule="cosine"))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = Lamb([{"params": [p], "lr_scale": 1.0}], lr=lr)
    build_scheduler(opt, cfg, 100, warm)
    assert opt.param_groups[0]["lr"] == pytest.approx(floor)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["optim.name=lamb", "train.zero_stage=2", "train.precision=fp32"], "train.zero_stage"),
        (["optim.name=lamb", "train.zero_stage=0", "train.precision=bf16"], "train.precision"),
        (["optim.name=sgd"], "optim.name"),
        (["optim.loss=hinge"], "optim.loss"),
        (["optim.loss=bce", "optim.label_smoothing=0.1"], "optim.label_smoothing"),
        (["optim.warmup_lr=1.0"], "optim.warmup_lr"),
    ],
)
def test_config_errors_name_key_and_value(overrides, key):
    from liere.engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key):
        load_config("configs/digits.yaml", overrides)
