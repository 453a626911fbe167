"""``train(cfg)``: the paper's recipe on an ImageFolder tree, on one process or many (torchrun).

The learning rate is a pure function of the optimiser step, data order a pure function of (seed, epoch), and a
checkpoint holds the step and every RNG state, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..data.safe import collate_skip, count_samples
from ..engine import distributed as D
from ..engine.checkpoint import atomic_save, rng_state, set_rng_state
from ..engine.metrics_log import MetricsLog
from ..engine.signals import RunInterrupted, SeededSamples, StopSignal
from ..infer.evaluate import build_eval_loader, evaluate, load_image_folder
from .config import ConfigError, TrainConfig


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
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


def learning_rate(cfg: TrainConfig, global_batch: int) -> float:
    return cfg.lr if cfg.lr is not None else cfg.lr_base * global_batch / cfg.lr_base_size


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, cfg: TrainConfig) -> float:
    """Linear warm-up from ``warmup_lr`` to ``peak``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return cfg.warmup_lr + (peak - cfg.warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and conv kernels only: none on norms, biases, layer-scale vectors, or what
    the model lists in ``no_weight_decay()`` (a ViT's position embedding and class token)."""
    import fnmatch

    skip = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # SSM parameters flag themselves (A_log is 2-D but, as in Mamba, must not decay).
            exempt = p.ndim <= 1 or getattr(p, "_no_weight_decay", False) or any(
                fnmatch.fnmatch(name, pat) for pat in skip)
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _train_transform(cfg: TrainConfig):
    from timm.data import create_transform

    try:
        return create_transform(
            input_size=cfg.img_size, is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
            color_jitter=cfg.color_jitter or None, auto_augment=cfg.auto_augment, interpolation=cfg.interpolation,
            mean=cfg.mean, std=cfg.std, re_prob=cfg.reprob, re_mode="pixel", re_count=1,
        )
    except (AssertionError, KeyError, ValueError) as e:  # timm asserts on a policy string it cannot parse
        raise ConfigError(f"setting 'auto_augment' (or 'interpolation') is not one timm knows: "
                          f"auto_augment={cfg.auto_augment!r}, interpolation={cfg.interpolation!r} ({e})") from None


def _eval_data_config(cfg: TrainConfig) -> dict:
    return {"input_size": (3, cfg.img_size, cfg.img_size), "interpolation": cfg.interpolation,
            "mean": tuple(cfg.mean), "std": tuple(cfg.std), "crop_pct": cfg.crop_pct, "crop_mode": "center"}


def _train_loader(dataset, cfg: TrainConfig, info: D.DistInfo, epoch: int, skip: int = 0):
    """Epoch ``epoch``'s batches for this rank, from micro-batch ``skip`` on (a resumed epoch skips what it saw).

    The order is DistributedSampler's (a function of seed and epoch) and each sample's augmentation a function of
    (seed, epoch, index) (``SeededSamples``), so the batches do not depend on where the run was resumed."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    order = list(sampler)[skip * cfg.batch_size:]
    # Its own generator: without one, creating the iterator draws worker seeds from the global RNG, and a loader
    # created at a resume point would shift the drop-path stream relative to an uninterrupted run.
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + info.rank)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.workers,
                      drop_last=True, generator=gen, pin_memory=info.device.type == "cuda",
                      persistent_workers=False, collate_fn=collate_skip)


def _criterion(cfg: TrainConfig, mixup_on: bool):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_on:
        return SoftTargetCrossEntropy()  # mixup already smooths the targets
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


class _Progress:
    """A tqdm bar on an interactive terminal, plain log lines every ``every`` steps otherwise."""

    def __init__(self, total: int, desc: str, every: int, enabled: bool, log):
        self.total, self.desc, self.every, self.log = total, desc, every, log
        self.start = time.perf_counter()
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float, images: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        ips = images / max(elapsed, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.3g}")
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total:
            eta = elapsed / step * (self.total - step)
            self.log(f"{self.desc} step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                     f"img/s {ips:.3g} eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_model(cfg: TrainConfig, num_classes: int, class_names: list[str]):
    from ..models import create_model

    model = create_model(
        cfg.model, pretrained=cfg.pretrained, checkpoint_path=cfg.checkpoint, num_classes=num_classes,
        drop_path_rate=cfg.drop_path, drop_rate=cfg.drop_rate,
    )
    model.pretrained_cfg = {**model.pretrained_cfg, **_eval_data_config(cfg), "num_classes": num_classes,
                            "label_names": list(class_names)}
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) as ``cfg`` says; returns the summary rank 0 also writes to ``summary.json``."""
    info = D.setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        D.cleanup()


def _train(cfg: TrainConfig, info: D.DistInfo) -> dict:
    import yaml
    from timm.data import Mixup
    from timm.utils import ModelEmaV3

    if cfg.amp == "fp16" and info.device.type != "cuda":
        raise ConfigError("amp 'fp16' needs a CUDA device (on CPU use --amp bf16)")
    accum = accumulation_steps(cfg, info.world_size)
    global_batch = cfg.batch_size * info.world_size * accum
    peak_lr = learning_rate(cfg, global_batch)
    out = Path(cfg.output)
    log = D.rank0_logger(info, out / "train.log")

    torch.manual_seed(cfg.seed)
    train_ds, val_ds, class_names, num_classes = _load_data(cfg, info)
    model = build_model(cfg, num_classes, class_names).to(info.device)
    raw_model = model
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=peak_lr, betas=cfg.opt_betas,
                                  eps=cfg.opt_eps)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    ema = ModelEmaV3(raw_model, decay=cfg.ema_decay) if cfg.ema else None
    if cfg.resume:
        start_epoch, start_batch, step, best_top1, partial = _restore(cfg, info, raw_model, optimizer, scaler, ema)
    else:
        start_epoch, start_batch, step, best_top1, partial = 0, 0, 0, -1.0, None
        _seed_ranks(cfg, info)

    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    mixup_on = cfg.mixup > 0 or cfg.cutmix > 0
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                  switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                  num_classes=num_classes) if mixup_on else None
    criterion = _criterion(cfg, mixup_on)
    steps_per_epoch = len(train_ds) // info.world_size // cfg.batch_size // accum
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_ds)} training images give no full optimiser step at global batch "
                          f"{global_batch}; lower --global-batch-size or --batch-size")
    schedule = (cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch, peak_lr)
    val_loader = build_eval_loader(val_ds, cfg.batch_size, cfg.workers, info)
    metrics = MetricsLog(out, enabled=info.is_main)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log(f"{cfg.model}: {len(train_ds)} train / {len(val_ds)} val images, {len(class_names)} classes, "
        f"{info.world_size} process(es) on {info.device}, global batch {global_batch} "
        f"({cfg.batch_size} x {info.world_size} x {accum} accumulation), lr {peak_lr:.3g}, "
        f"{steps_per_epoch} steps/epoch" + (f", resuming at epoch {start_epoch + 1}, step {start_batch + 1}"
                                            if cfg.resume else ""))

    run = _Run(cfg, info, out, raw_model, optimizer, scaler, ema, class_names, log, metrics)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    summary: dict = {}
    with StopSignal() as stop:
        for epoch in range(start_epoch, end_epoch):
            first = start_batch if epoch == start_epoch else 0
            model.train()
            tally = dict(partial) if first and partial else {"seen": 0, "loss_sum": 0.0, "n_loss": 0,
                                                              "skipped_steps": 0, "skipped_samples": 0,
                                                              "time": 0.0}
            t0 = time.perf_counter() - tally["time"]
            batches = iter(_train_loader(train_ds, cfg, info, epoch, first * accum))
            step, lr, stop_now = _run_epoch(run, model, batches, stop, epoch, first, steps_per_epoch, step,
                                            best_top1, tally, (criterion, mixup, accum), schedule, t0)
            row, best_top1 = run.end_epoch(epoch, step, lr, tally, time.perf_counter() - t0, end_epoch,
                                           val_loader, best_top1)
            summary = {"epoch": epoch + 1, "best_top1": best_top1, **row}
            if stop_now and epoch + 1 < end_epoch:
                raise RunInterrupted(f"stopped by {stop.name} after epoch {epoch + 1}; resume with --resume "
                                     f"{out / 'last.pt'}", stop.signum or 2)
    if info.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _load_data(cfg: TrainConfig, info: D.DistInfo):
    """(training set, validation set, class names, number of classes), refused in one line when they do not fit
    together or the batch does."""
    train_ds, class_names = load_image_folder(Path(cfg.data_dir) / "train", _train_transform(cfg),
                                              strict=cfg.strict_data)
    train_ds = SeededSamples(train_ds, cfg.seed)
    val_ds, val_classes = load_image_folder(Path(cfg.data_dir) / "val", None, _eval_data_config(cfg),
                                            strict=cfg.strict_data)
    if val_classes != class_names:
        raise ConfigError(f"class folders of {Path(cfg.data_dir) / 'val'} differ from those of "
                          f"{Path(cfg.data_dir) / 'train'}: {sorted(set(val_classes) ^ set(class_names))[:5]}")
    num_classes = cfg.num_classes or len(class_names)
    if num_classes < len(class_names):
        raise ConfigError(f"num_classes {num_classes} is smaller than the {len(class_names)} class folders")
    if cfg.batch_size > len(train_ds) // info.world_size:
        raise ConfigError(f"batch size {cfg.batch_size} exceeds the {len(train_ds)} training images "
                          f"per {info.world_size} process(es)")
    return train_ds, val_ds, class_names, num_classes


def _restore(cfg: TrainConfig, info: D.DistInfo, raw_model, optimizer, scaler, ema):
    """Load ``--resume``; (start epoch, start step inside it, global step, best top-1, this rank's running sums
    when the run stopped mid-epoch)."""
    from ..models.weights import read_checkpoint

    ckpt = read_checkpoint(cfg.resume)
    if "optimizer" not in ckpt or not isinstance(ckpt.get("model"), dict):
        raise ConfigError(f"--resume {cfg.resume} is not a checkpoint written by 'mambaout train' (no optimizer "
                          f"state); to start from its weights, pass it as --checkpoint")
    if ckpt.get("model_name") != cfg.model:
        raise ConfigError(f"--resume {cfg.resume} is a {ckpt.get('model_name')} run, not {cfg.model}")
    raw_model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None and ckpt.get("ema"):
        ema.module.load_state_dict(ckpt["ema"])
    start_epoch, start_batch, partial = ckpt["epoch"] + 1, 0, None
    if ckpt.get("batch"):  # written by an interrupted run: continue inside its epoch
        start_epoch, start_batch, partial = ckpt["epoch"], ckpt["batch"], ckpt.get("partial")
        # Each rank's own running sums (a list per rank; older checkpoints kept one process's dict).
        if isinstance(partial, list):
            partial = partial[info.rank] if len(partial) == info.world_size else None
        elif info.enabled:
            partial = None
    set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
    return start_epoch, start_batch, ckpt["step"], ckpt.get("best_top1", -1.0), partial


def _seed_ranks(cfg: TrainConfig, info: D.DistInfo) -> None:
    """Ranks draw different augmentations; parameters start equal (DDP broadcasts rank 0's)."""
    import random

    import numpy as np

    torch.manual_seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)
    np.random.seed(cfg.seed + info.rank)


def _run_epoch(run, model, batches, stop, epoch, first, steps_per_epoch, step, best_top1, tally, loss, schedule,
               t0):
    """Optimiser steps ``first``..``steps_per_epoch`` of ``epoch``, summed into ``tally``; (global step, last lr,
    whether a stop was requested). A stop inside the epoch writes a resumable checkpoint and raises."""
    cfg, info, out = run.cfg, run.info, run.out
    criterion, mixup, accum = loss
    bar = _Progress(steps_per_epoch - first, f"epoch {epoch + 1}/{cfg.epochs}", cfg.log_interval, info.is_main,
                    run.log)
    seen_before, stop_now, lr = tally["seen"], False, 0.0
    for i in range(first, steps_per_epoch):
        lr = lr_at(step, *schedule, cfg)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        step_loss, finite = run.accumulate(model, batches, accum, criterion, mixup, tally, epoch, step)
        stop_now = D.any_true(stop.requested, info)
        if not D.all_true(finite, info):
            if cfg.nonfinite == "stop":
                raise NonFiniteLoss(f"loss is not finite at epoch {epoch + 1}, step {step}; stopped "
                                    f"without overwriting {out / 'last.pt'} (--nonfinite skip skips such "
                                    "steps instead; a lower --lr or --clip-grad usually cures it)")
            run.optimizer.zero_grad(set_to_none=True)
            tally["skipped_steps"] += 1
        else:
            run.optimizer_step()
            tally["loss_sum"], tally["n_loss"] = tally["loss_sum"] + step_loss, tally["n_loss"] + 1
        step += 1
        bar.update(i + 1 - first, step_loss, lr, (tally["seen"] - seen_before) * info.world_size)
        if stop_now and i + 1 < steps_per_epoch:
            bar.close()
            tally["time"] = time.perf_counter() - t0
            run.save(epoch, step, best_top1, {}, batch=i + 1, partial=tally)
            raise RunInterrupted(
                f"stopped by {stop.name} at epoch {epoch + 1}, step {i + 1}/{steps_per_epoch}; resume with "
                f"--resume {out / 'last.pt'}", stop.signum or 2)
    bar.close()
    return step, lr, stop_now


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss with ``nonfinite: stop``; the last good checkpoint is left as it was."""


def next_batch(batches, expected: int, tally: dict):
    """The next batch that holds anything, counting the samples skipped as unreadable in ``tally``."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            raise RuntimeError("the epoch ran out of readable batches: too many unreadable images "
                               f"({tally.get('skipped_samples', 0)} skipped so far)") from None
        tally["skipped_samples"] = tally.get("skipped_samples", 0) + expected - count_samples(batch)
        if batch is not None:
            return batch


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


class _Run:
    """The parts of a training step and of an epoch's end that need the run's state (kept out of the loop)."""

    def __init__(self, cfg, info, out, model, optimizer, scaler, ema, class_names, log, metrics):
        self.cfg, self.info, self.out, self.model = cfg, info, out, model
        self.optimizer, self.scaler, self.ema = optimizer, scaler, ema
        self.class_names, self.log, self.metrics = class_names, log, metrics
        self.step = 0

    def accumulate(self, ddp_model, batches, accum, criterion, mixup, tally, epoch, step):
        """Forward and backward over ``accum`` micro-batches; (loss, whether every loss was finite).

        Backward runs even on a non-finite loss so that every DDP rank takes part in the same all-reduces; the
        caller then drops the step on all ranks alike."""
        cfg, info = self.cfg, self.info
        step_loss, finite = 0.0, True
        for micro in range(accum):
            images, targets = next_batch(batches, cfg.batch_size, tally)
            seen = images.shape[0]
            if mixup is not None and seen % 2:
                # Mixup pairs images, so a batch made odd by an unreadable file takes one of its images twice.
                images, targets = torch.cat([images, images[:1]]), torch.cat([targets, targets[:1]])
            images, targets = images.to(info.device, non_blocking=True), targets.to(info.device)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if mixup is not None:
                images, targets = mixup(images, targets)
            sync = contextlib.nullcontext() if micro == accum - 1 or not info.enabled else ddp_model.no_sync()
            with sync:
                with _autocast(cfg, info.device):
                    loss = criterion(ddp_model(images), targets) / accum
                finite = finite and bool(torch.isfinite(loss))
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            step_loss += loss.item()
            tally["seen"] += seen
        self.step = step
        return step_loss, finite

    def optimizer_step(self) -> None:
        optimizer_step(self.model, self.optimizer, self.scaler, self.cfg.clip_grad)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def end_epoch(self, epoch, step, lr, tally, train_time, end_epoch, val_loader, best_top1):
        """Reduce the epoch's numbers, evaluate, log, checkpoint; returns (row, best top-1)."""
        cfg, info = self.cfg, self.info
        loss_sum, n_loss, skipped, bad = D.all_reduce_sum(
            [tally["loss_sum"], tally["n_loss"], tally["skipped_steps"], tally.get("skipped_samples", 0)], info)
        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / max(1.0, n_loss),
               "train_images_per_sec": tally["seen"] * info.world_size / train_time, "epoch_time_s": train_time}
        if skipped:
            row["skipped_steps"] = int(skipped)
        if bad:
            row["skipped_images"] = int(bad)
        if (epoch + 1) % cfg.eval_interval == 0 or epoch == end_epoch - 1:
            res = evaluate(self.model, val_loader, info, amp=cfg.amp)
            row.update(val_loss=res["loss"], top1=res["top1"], top5=res["top5"])
            if self.ema is not None:
                res_ema = evaluate(self.ema.module, val_loader, info, amp=cfg.amp)
                row.update(ema_top1=res_ema["top1"], ema_top5=res_ema["top5"])
        self.metrics.append(row)
        self.log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}"
                 + (f", val loss {row['val_loss']:.4f}, top-1 {row['top1']:.2f}%, top-5 {row['top5']:.2f}%"
                    if "top1" in row else "")
                 + f", {row['train_images_per_sec']:.0f} img/s"
                 + (f", {int(skipped)} step(s) skipped (non-finite loss)" if skipped else "")
                 + (f", {int(bad)} unreadable image(s) skipped" if bad else ""))
        improved = "top1" in row and row["top1"] > best_top1
        best_top1 = max(best_top1, row.get("top1", best_top1))
        self.save(epoch, step, best_top1, row, best=improved)
        if info.is_main:
            self.metrics.plot()
        D.barrier(info)
        return row, best_top1

    def save(self, epoch, step, best_top1, row, best=False, batch=None, partial=None) -> None:
        """last.pt (and best.pt), atomically; ``batch``/``partial`` mark a checkpoint written mid-epoch."""
        rng = _gather_rng(self.info)
        partials = D.gather_objects(partial, self.info) if batch is not None else None
        if not self.info.is_main:
            return
        cfg, model = self.cfg, self.model
        ckpt = {
            "model": model.state_dict(), "model_name": cfg.model,
            "model_args": {"drop_rate": cfg.drop_rate}, "class_names": list(self.class_names),
            "pretrained_cfg": _plain(model.pretrained_cfg), "config": cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": epoch, "step": step, "best_top1": best_top1, "metrics": row, "rng": rng,
        }
        if batch is not None:
            ckpt.update(batch=batch, partial=partials)
        atomic_save(ckpt, self.out / "last.pt")
        if best:
            atomic_save(ckpt, self.out / "best.pt")


def _gather_rng(info: D.DistInfo) -> list:
    """Every rank's RNG state, so each rank resumes its own augmentation stream."""
    return D.gather_objects(rng_state(), info)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
