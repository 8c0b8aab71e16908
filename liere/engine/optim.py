"""AdamW or LAMB with parameter groups, and the learning-rate schedules after a warmup: cosine, constant, step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def param_groups(
    model: nn.Module, weight_decay: float, encoding_lr_scale: float, encoding_weight_decay: float
) -> list[dict]:
    """Three groups: decayed weights; undecayed norms, biases and tokens; the position encoding, with
    its own learning-rate multiplier ``lr_scale`` and its own decay (0 by default, as in the official
    LieRE code and RoPE-ViT; on LieRE's generators a decay lowers every rotation frequency)."""
    no_decay_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = {
        "decay": {"weight_decay": weight_decay, "lr_scale": 1.0},
        "no_decay": {"weight_decay": 0.0, "lr_scale": 1.0},
        "encoding": {"weight_decay": encoding_weight_decay, "lr_scale": encoding_lr_scale},
    }
    for group in groups.values():
        group.update(params=[], liere_param_names=[])  # names: stage-0 checkpoints keep fp32 weights by group
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("encoding."):
            kind = "encoding"
        elif p.ndim <= 1 or name in no_decay_names:
            kind = "no_decay"
        else:
            kind = "decay"
        groups[kind]["params"].append(p)
        groups[kind]["liere_param_names"].append(name)
    return [{"name": kind, **g} for kind, g in groups.items() if g["params"]]


OPTIMIZERS = ("adamw", "lamb")


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
    ICLR 2020, arXiv 1904.00962) in the NVLAMB form of apex's ``FusedLAMB``, which DeiT III ran
    (``--opt fusedlamb`` through timm): per tensor, with t the step,

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd p
        r = ||p|| / ||u|| if wd != 0 and both norms > 0, else 1       (the trust ratio)
        p = p - lr r u

    apex also clips the global gradient norm to 1 first (``max_grad_norm``); here that is
    DeepSpeed's ``gradient_clipping`` (``optim.grad_clip``), which sees every rank's gradients.
    Plain torch, so it runs on CPUs and GPUs alike; DeepSpeed's own ``FusedLamb`` has no CPU
    kernel ("This op had not been implemented on CPU backend") and bounds r to [0.01, 10].
    The ratio needs whole tensors: ZeRO's flat shards would turn it into a per-shard ratio.
    """

    def __init__(
        self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0
    ):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = (m / (1 - b1**t)) / (v.div(1 - b2**t).sqrt_().add_(group["eps"]))
                ratio = 1.0
                if wd != 0:
                    update.add_(p, alpha=wd)
                    w_norm, u_norm = p.norm(), update.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update * (group["lr"] * ratio))
        return loss


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """torch AdamW (resumes bit-identically under DeepSpeed, unlike the JIT-compiled C++ Adam), or
    ``Lamb`` (``optim.name=lamb``); the same parameter groups either way."""
    groups = param_groups(model, cfg.weight_decay, cfg.encoding_lr_scale, cfg.encoding_weight_decay)
    if getattr(cfg, "name", "adamw") == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    min_ratio: float,
    *,
    warmup_ratio: float = 0.0,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    steps_per_epoch: int = 1,
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based). Warmup rises
    linearly: from ``warmup_ratio`` at step 0 when given (timm's ``warmup_lr``, DeiT's 1e-6), else
    from 1 / warmup_steps at step 0. ``step``: times ``gamma`` at each of ``milestones`` (fractions of
    the run), per epoch as torch's MultiStepLR stepped once an epoch (MedMNIST's training script): the
    epoch e = step // steps_per_epoch runs at gamma ** (number of milestones m with e >= m * run epochs)."""
    if warmup_steps and step < warmup_steps:
        if warmup_ratio > 0:
            return warmup_ratio + (1 - warmup_ratio) * step / warmup_steps
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        epoch, run_epochs = step // steps_per_epoch, total_steps / steps_per_epoch
        # (1e-9: a milestone that is a whole epoch in exact arithmetic, e.g. 0.1 x 30, is that epoch)
        return gamma ** sum(epoch >= m * run_epochs - 1e-9 for m in milestones)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg, total_steps: int, warmup_steps: int, *, steps_per_epoch: int = 1
):
    """A LambdaLR applying ``lr_factor`` times each group's ``lr_scale``; DeepSpeed checkpoints it.
    ``steps_per_epoch`` places the step schedule's milestones on epoch boundaries (1: on steps)."""
    min_ratio, warmup_ratio = cfg.min_lr / cfg.lr, getattr(cfg, "warmup_lr", 0.0) / cfg.lr
    shape = dict(
        warmup_ratio=warmup_ratio,
        milestones=tuple(getattr(cfg, "step_milestones", ())),
        gamma=getattr(cfg, "step_gamma", 0.1),
        steps_per_epoch=max(1, int(steps_per_epoch)),
    )
    lambdas = [
        (
            lambda step, s=g["lr_scale"]: (
                s * lr_factor(step, total_steps, warmup_steps, cfg.schedule, min_ratio, **shape)
            )
        )
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
