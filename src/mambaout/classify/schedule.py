"""The classification learning-rate schedules: the official run's per-epoch one (timm 0.6.11) and a per-step one."""
from __future__ import annotations

import math

from ..engine.optim import accumulation_steps
from .config import ConfigError, TrainConfig


def learning_rate(cfg: TrainConfig, global_batch: int) -> float:
    return cfg.lr if cfg.lr is not None else cfg.lr_base * global_batch / cfg.lr_base_size


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, cfg: TrainConfig) -> float:
    """Linear warm-up from ``warmup_lr`` to ``peak``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return cfg.warmup_lr + (peak - cfg.warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_lr(cfg: TrainConfig, epoch: int, peak: float) -> float:
    """The learning rate of ``epoch`` as timm 0.6.11's ``CosineLRScheduler`` gives it, set up as the official run
    set it up (``t_initial=epochs``, ``warmup_t=warmup_epochs``, ``warmup_lr_init=warmup_lr``, ``lr_min=min_lr``,
    ``warmup_prefix=False``, one cycle, once per epoch): the cosine runs over epochs 0..epochs with the linear
    warm-up laid over its start, then ``min_lr`` through the cool-down epochs."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr + epoch * (peak - cfg.warmup_lr) / cfg.warmup_epochs
    if epoch >= cfg.epochs:
        return cfg.min_lr
    return cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1 + math.cos(math.pi * epoch / cfg.epochs))


def step_lr(cfg: TrainConfig, step: int, steps_per_epoch: int, peak: float) -> float:
    """The learning rate of optimiser step ``step``: per epoch (``sched: epoch``) or per step."""
    if cfg.sched == "epoch":
        return epoch_lr(cfg, step // steps_per_epoch, peak)
    return lr_at(step, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch, peak, cfg)


def schedule_rows(cfg: TrainConfig, world_size: int = 1, steps_per_epoch: int | None = None) -> list[tuple]:
    """(epoch, lr at its start) for every epoch of the run, cool-down included; a per-step schedule needs the
    steps per epoch."""
    global_batch = cfg.batch_size * world_size * accumulation_steps(cfg, world_size)
    peak = learning_rate(cfg, global_batch)
    if cfg.sched == "epoch":
        steps_per_epoch = steps_per_epoch or 1  # the rate does not move inside an epoch
    elif not steps_per_epoch:
        raise ConfigError("a per-step schedule (sched: step) depends on the steps per epoch: give --data-dir")
    return [(e, step_lr(cfg, e * steps_per_epoch, steps_per_epoch, peak))
            for e in range(cfg.epochs + cfg.cooldown_epochs)]
