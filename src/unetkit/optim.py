"""Optimizers and learning-rate schedules, built from :class:`~unetkit.config.OptimConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from .config import OptimConfig

FINAL_LR_FRACTION = 0.01  # where cosine ends, as a fraction of the configured lr
WARMUP_START = 0.05  # where the cosine warm-up starts, likewise
WARMUP_TIME = 0.03  # with a time budget: the warm-up's share of the training time


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


def cosine_factor(progress: float) -> float:
    """The cosine decay from 1 at progress 0 to FINAL_LR_FRACTION at progress 1."""
    progress = min(1.0, max(0.0, progress))
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def timed_factor(cfg: OptimConfig, fraction: Callable[[], float]) -> Callable[[int], float]:
    """The lr factor of a time-budgeted run: the schedule's shape over the fraction of the
    training time used (``fraction()``, 0..1), so it ends when the time does."""
    warm = WARMUP_TIME if cfg.warmup_epochs > 0 and cfg.schedule == "cosine" else 0.0

    def factor(_step: int) -> float:
        t = fraction()
        if t < warm:
            return WARMUP_START + (1 - WARMUP_START) * t / warm
        if cfg.schedule == "cosine":
            return cosine_factor((t - warm) / (1 - warm))
        return max(0.0, 1 - t) ** cfg.poly_power if cfg.schedule == "poly" else 1.0

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int,
                   steps: int, time_fraction: Callable[[], float] | None = None):
    """(scheduler, stepped per batch?). Per-batch schedules change smoothly even in short
    runs; reduce-on-plateau needs the validation score, so it steps per epoch.

    Cosine and poly are LambdaLR factors of the step and the CURRENT total, so resuming
    with more epochs stretches the schedule instead of restarting or stopping it (a
    CosineAnnealingLR/PolynomialLR would keep the old total from its saved state). With
    ``time_fraction`` (a time-budgeted run) they follow the clock instead of the step.
    """
    sched = torch.optim.lr_scheduler
    total = max(1, epochs * steps)
    if time_fraction is not None and cfg.schedule in ("cosine", "poly", "none"):
        return sched.LambdaLR(optimizer, timed_factor(cfg, time_fraction)), True
    if cfg.schedule == "cosine":
        warm = min(cfg.warmup_epochs * steps, total - 1)

        def cosine(step: int) -> float:
            if step < warm:  # linear warm-up
                return WARMUP_START + (1 - WARMUP_START) * step / warm
            return cosine_factor((step - warm) / max(1, total - warm))

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
