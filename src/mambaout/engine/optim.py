"""The optimiser side of a run: parameter groups, batch accounting and one optimiser step."""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from ..utils.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and conv kernels only: none on norms, biases, layer-scale vectors, or what
    the model lists in ``no_weight_decay()`` (a ViT's position embedding and class token)."""
    skip = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # SSM parameters flag themselves (A_log is 2-D but, as in Mamba, must not decay).
            exempt = p.ndim <= 1 or getattr(p, "_no_weight_decay", False) or any(
                fnmatch.fnmatch(name, pat) for pat in skip)
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def accumulation_steps(cfg, world_size: int) -> int:
    """Optimiser steps accumulate ``global / (per-device batch × world size)`` micro-batches."""
    per_step = cfg.batch_size * world_size
    if cfg.global_batch_size is None:
        return 1
    if cfg.global_batch_size % per_step:
        raise ConfigError(
            f"global batch {cfg.global_batch_size} is not a multiple of batch size {cfg.batch_size} × "
            f"{world_size} process(es) = {per_step}; choose --global-batch-size or --batch-size so it divides"
        )
    return cfg.global_batch_size // per_step


def steps_per_epoch(n_train: int, cfg, world_size: int, accum: int) -> int:
    """Full optimiser steps in one pass over ``n_train`` images; refused in one line when there is none."""
    steps = n_train // world_size // cfg.batch_size // accum
    if steps == 0:
        raise ConfigError(f"{n_train} training images give no full optimiser step at global batch "
                          f"{cfg.batch_size * world_size * accum}; lower --global-batch-size or --batch-size")
    return steps


def optimizer_step(model, optimizer, scaler, clip_grad: float | None) -> None:
    """Unscale (fp16), clip, step, clear the gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
