"""AdamW with parameter groups, and the warmup-then-cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, encoding_lr_scale: float) -> list[dict]:
    """Three groups: decayed weights; undecayed norms, biases and tokens; the position encoding
    (undecayed, with its own learning-rate multiplier ``lr_scale``)."""
    no_decay_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = {
        "decay": {"weight_decay": weight_decay, "lr_scale": 1.0},
        "no_decay": {"weight_decay": 0.0, "lr_scale": 1.0},
        "encoding": {"weight_decay": 0.0, "lr_scale": encoding_lr_scale},
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


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """torch AdamW (resumes bit-identically under DeepSpeed, unlike the JIT-compiled C++ Adam)."""
    groups = param_groups(model, cfg.weight_decay, cfg.encoding_lr_scale)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int, warmup_steps: int):
    """A LambdaLR applying ``lr_factor`` times each group's ``lr_scale``; DeepSpeed checkpoints it."""
    min_ratio = cfg.min_lr / cfg.lr
    lambdas = [
        (
            lambda step, s=g["lr_scale"]: (
                s * lr_factor(step, total_steps, warmup_steps, cfg.schedule, min_ratio)
            )
        )
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
