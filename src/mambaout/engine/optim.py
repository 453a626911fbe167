"""The optimiser side of a run: parameter groups, batch accounting and one optimiser step."""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from ..utils.errors import ConfigError


def exempt_names(model: nn.Module) -> list[str]:
    """Parameters that never decay besides the 1-D ones: what the model lists in ``no_weight_decay()`` (a ViT's
    position embedding and class token) and SSM parameters that flag themselves (``A_log`` is 2-D but, as in
    Mamba, must not decay)."""
    names = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    return names + [n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)]


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Optimiser groups: weight decay on weight matrices and conv kernels only (none on norms, biases,
    layer-scale vectors or ``exempt_names``).

    ``layer_decay``: layer-wise lr decay as timm does it (``timm.optim.param_groups_layer_decay``, built from the
    model's ``group_matcher``): the head keeps the full lr and each layer below it ``layer_decay`` times the one
    above; each group carries its factor as ``lr_scale``, which the training loop multiplies into the lr."""
    skip = exempt_names(model)
    if layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            exempt = p.ndim <= 1 or any(fnmatch.fnmatch(name, pat) for pat in skip)
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scale_by_layer(groups: list[dict], backbone: nn.Module, layer_decay: float | None) -> list[dict]:
    """``groups`` split by the layer of ``backbone`` each parameter lies in, each part with its ``lr_scale``:
    ``layer_decay ** (layers - i)`` for the backbone's layer ``i`` (``group_matcher`` order, stem first), 1 for
    everything outside it (a detector's or segmenter's heads). This is mmdet's layer-decay rule for ConvNeXt and
    Swin backbones: the heads train at the full lr and the backbone's top layer one step below them."""
    if layer_decay is None:
        return groups
    from timm.models import group_parameters

    layer_of = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    layers = max(layer_of.values()) + 1
    scale = {id(p): layer_decay ** (layers - layer_of.get(n, layers - 1)) for n, p in backbone.named_parameters()}
    out = []
    for group in groups:
        parts: dict[float, list] = {}
        for p in group["params"]:
            parts.setdefault(scale.get(id(p), 1.0), []).append(p)
        out += [{**group, "params": ps, "lr_scale": s} for s, ps in sorted(parts.items())]
    return out


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
