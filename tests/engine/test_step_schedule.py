"""The step schedule (``optim.schedule=step``): MedMNIST's MultiStepLR, x0.1 at 50% and 75% of the epochs, stepped
once per epoch (MedMNIST/experiments MedMNIST3D/train_and_eval_pytorch.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from liere.engine.config import ConfigError, load_config
from liere.engine.optim import build_scheduler, lr_factor

EPOCHS, PER_EPOCH = 100, 30  # OrganMNIST3D: 972 training volumes at batch 32 -> 30 steps an epoch
STEP = dict(milestones=(0.5, 0.75), gamma=0.1, steps_per_epoch=PER_EPOCH)


def _factor(step: int, total: int = EPOCHS * PER_EPOCH, warmup: int = 0, **kw) -> float:
    return lr_factor(step, total, warmup, "step", 0.0, **{**STEP, **kw})


def test_step_factors_at_the_milestones_by_hand():
    # epochs 0-49 at 1, 50-74 at 0.1, 75-99 at 0.01: the drop is at the first step of epochs 50 and 75
    assert _factor(0) == 1.0
    assert _factor(50 * PER_EPOCH - 1) == 1.0  # the last step of epoch 49
    assert _factor(50 * PER_EPOCH) == pytest.approx(0.1)
    assert _factor(75 * PER_EPOCH - 1) == pytest.approx(0.1)
    assert _factor(75 * PER_EPOCH) == pytest.approx(0.01)
    assert _factor(EPOCHS * PER_EPOCH - 1) == pytest.approx(0.01)
    # milestones are fractions of the run (max_steps shortens it): 20 epochs drop at epochs 10 and 15
    assert _factor(10 * PER_EPOCH - 1, total=600) == 1.0 and _factor(10 * PER_EPOCH, total=600) == 0.1
    assert _factor(15 * PER_EPOCH, total=600) == pytest.approx(0.01)
    assert _factor(80 * PER_EPOCH, gamma=1.0) == 1.0  # gamma 1: constant
    # steps_per_epoch 1: the milestones count steps
    assert lr_factor(49, 100, 0, "step", 0.0, milestones=(0.5,), gamma=0.5) == 1.0
    assert lr_factor(50, 100, 0, "step", 0.0, milestones=(0.5,), gamma=0.5) == 0.5


@pytest.mark.parametrize("epochs", [100, 40, 8])
def test_step_follows_multisteplr_stepped_per_epoch(epochs):
    """The source's scheduler (train_and_eval_pytorch.py:26, :117, :142): MultiStepLR(milestones=[0.5 n, 0.75 n],
    gamma=0.1), scheduler.step() after each epoch; every step of an epoch at that epoch's rate."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[0.5 * epochs, 0.75 * epochs], gamma=0.1)
    for epoch in range(epochs):
        want = opt.param_groups[0]["lr"]
        for step in (epoch * PER_EPOCH, epoch * PER_EPOCH + PER_EPOCH - 1):
            assert _factor(step, total=epochs * PER_EPOCH) == pytest.approx(want), (epoch, step)
        opt.step()
        ref.step()


def test_a_milestone_between_epochs_drops_at_the_next_epoch():
    # 25 epochs: milestones 12.5 and 18.75. MultiStepLR decays only at an epoch equal to a milestone, so the
    # source's 0.5 x 25 never decays; here the drop is at the first epoch past it (13, then 19)
    total = 25 * PER_EPOCH
    assert _factor(13 * PER_EPOCH - 1, total=total) == 1.0 and _factor(13 * PER_EPOCH, total=total) == 0.1
    assert _factor(19 * PER_EPOCH - 1, total=total) == 0.1
    assert _factor(19 * PER_EPOCH, total=total) == pytest.approx(0.01)
    # a whole epoch in exact arithmetic (0.1 x 30 = 3.0000000000000004 in floats) is that epoch
    assert lr_factor(3 * PER_EPOCH, 30 * PER_EPOCH, 0, "step", 0.0, **{**STEP, "milestones": (0.1,)}) == 0.1


def test_step_keeps_the_warmup_and_the_groups_scale():
    warm = 5 * PER_EPOCH
    assert _factor(0, warmup=warm) == pytest.approx(1 / warm)  # warmup as before: from lr / warmup steps
    assert _factor(warm - 1, warmup=warm) == pytest.approx(1.0)
    assert _factor(warm, warmup=warm) == 1.0 and _factor(50 * PER_EPOCH, warmup=warm) == pytest.approx(0.1)
    cfg = OmegaConf.create(
        dict(lr=1e-3, min_lr=1e-6, schedule="step", step_milestones=[0.5, 0.75], step_gamma=0.1)
    )
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr_scale": 1.0}, {"params": [b], "lr_scale": 0.5}], lr=1e-3)
    sched = build_scheduler(opt, cfg, 4 * PER_EPOCH, 0, steps_per_epoch=PER_EPOCH)  # 4 epochs: drops at 2, 3
    lrs = []
    for _ in range(4 * PER_EPOCH):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[2 * PER_EPOCH - 1] == pytest.approx([1e-3, 5e-4])
    assert lrs[2 * PER_EPOCH] == pytest.approx([1e-4, 5e-5])
    assert lrs[3 * PER_EPOCH] == pytest.approx([1e-5, 5e-6])


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.step_milestones=[0.75,0.5]", r"optim.step_milestones=\[0.75, 0.5\]: expected increasing"),
        ("optim.step_milestones=[0.0,0.5]", r"optim.step_milestones=\[0.0, 0.5\]: expected increasing"),
        ("optim.step_milestones=[0.5,1.0]", r"optim.step_milestones=\[0.5, 1.0\]"),
        ("optim.step_milestones=[]", r"optim.step_milestones=\[\]: optim.schedule=step needs a milestone"),
        ("optim.step_gamma=0.0", r"optim.step_gamma=0.0: expected a factor in \(0, 1\]"),
        ("optim.step_gamma=1.5", r"optim.step_gamma=1.5"),
        ("optim.schedule=stairs", r"optim.schedule='stairs'"),
    ],
)
def test_step_config_errors_name_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/digits.yaml", ["optim.schedule=step", override])


def test_medmnist_recipe_runs_the_step_schedule():
    cfg = load_config("configs/volume/medmnist3d_vit_s.yaml")
    o = cfg.optim
    assert (o.schedule, list(o.step_milestones), o.step_gamma) == ("step", [0.5, 0.75], 0.1)
    assert "substitute" not in Path("configs/volume/medmnist3d_vit_s.yaml").read_text()
