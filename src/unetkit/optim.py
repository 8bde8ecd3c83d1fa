"""Optimizers and learning-rate schedules, built from :class:`~unetkit.config.OptimConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .config import OptimConfig

FINAL_LR_FRACTION = 0.01  # where cosine ends, as a fraction of the configured lr
WARMUP_START = 0.05  # where the cosine warm-up starts, likewise


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig
                   ) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum, the paper's 0.99) over the trainable
    parameters (a frozen encoder's are left out)."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {cfg.optimizer!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int,
                   steps: int):
    """(scheduler, stepped per batch?). Per-batch schedules change smoothly even in short
    runs; reduce-on-plateau needs the validation score, so it steps per epoch.

    Cosine and poly are LambdaLR factors of the step and the CURRENT total, so resuming
    with more epochs stretches the schedule instead of restarting or stopping it (a
    CosineAnnealingLR/PolynomialLR would keep the old total from its saved state).
    """
    sched = torch.optim.lr_scheduler
    total = max(1, epochs * steps)
    if cfg.schedule == "cosine":
        warm = min(cfg.warmup_epochs * steps, total - 1)

        def cosine(step: int) -> float:
            if step < warm:  # linear warm-up
                return WARMUP_START + (1 - WARMUP_START) * step / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (
                1 + math.cos(math.pi * progress))

        return sched.LambdaLR(optimizer, cosine), True
    if cfg.schedule == "poly":
        return sched.LambdaLR(
            optimizer, lambda step: max(0.0, 1 - step / total) ** cfg.poly_power), True
    if cfg.schedule == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size * steps, gamma=cfg.step_gamma), True
    if cfg.schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=5), False
    if cfg.schedule == "none":
        return sched.LambdaLR(optimizer, lambda _: 1.0), True
    raise ValueError(f"schedule must be cosine, poly, step, plateau or none, got {cfg.schedule!r}")
