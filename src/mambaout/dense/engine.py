"""One training loop for detection and segmentation, built from ``mambaout train``'s parts (config resolution,
torchrun/DDP set-up, AdamW parameter groups without decay on norms and biases, atomic checkpoints holding every
rank's RNG, the progress bar, metrics files and curves).

Dense recipes count iterations rather than epochs (mmdetection's 1× schedule is 12 epochs with steps at epochs 8
and 11; mmsegmentation's is 160k iterations), so the loop runs over optimiser iterations; the data order is a pure
function of (seed, data epoch, rank), and a resumed run skips exactly the batches it had already seen.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from ..engine import distributed as D
from ..engine.checkpoint import atomic_save, set_rng_state
from ..engine.config import ConfigError
from ..engine.metrics_log import MetricsLog
from ..engine.signals import RunInterrupted, StopSignal
from .config import DenseConfig, DetectConfig, SegmentConfig


def lr_at(cfg: DenseConfig, it: int, total: int, iters_per_epoch: int) -> float:
    """The learning rate of iteration ``it``: linear warm-up from ``lr × warmup_ratio``, then the task's schedule
    (step decay at epoch boundaries for detection, poly decay for segmentation), as mmdet/mmseg apply them."""
    if isinstance(cfg, DetectConfig):
        epoch = it // max(1, iters_per_epoch)
        regular = cfg.lr * cfg.lr_gamma ** sum(epoch >= s for s in cfg.steps())
    elif isinstance(cfg, SegmentConfig):
        regular = (cfg.lr - cfg.min_lr) * (1 - min(it, total) / total) ** cfg.poly_power + cfg.min_lr
    else:
        regular = cfg.lr
    if it < cfg.warmup_iters:
        return regular * (1 - (1 - it / cfg.warmup_iters) * (1 - cfg.warmup_ratio))
    return regular


def resolve_amp(amp: str, device: torch.device) -> str:
    if amp == "auto":
        return "fp16" if device.type == "cuda" else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp 'fp16' needs a CUDA device (on CPU use --amp bf16 or none)")
    return amp


def autocast(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def epoch_batches(n: int, seed: int, epoch: int, batch: int, rank: int, world: int, accum: int = 1) -> list:
    """This rank's micro-batches of data epoch ``epoch``, in order: one shuffled permutation per epoch, cut into
    micro-batches of ``batch``; optimiser step ``i`` takes micro-batches ``i·W·A … (i+1)·W·A - 1`` (W processes,
    A accumulation steps), micro step ``m`` of rank ``r`` number ``(i·A + m)·W + r``. So W processes and one
    process accumulating W micro-batches see the same micro-batches, each whole, in every step."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch * world * accum
    chunks = [order[i:i + batch] for i in range(0, n - n % per_step, batch)]
    return chunks[rank::world]


def micro_batch_seed(seed: int, it: int, micro: int, accum: int, rank: int, world: int) -> int:
    """The global RNG seed of one micro-batch (drop path, the detector's anchor and RoI sampling, dropout): a
    function of the micro-batch's global number (see ``epoch_batches``), so the randomness does not depend on how
    many processes share the work, or on where a run was resumed."""
    return (seed * 1_000_003 + (it * accum + micro) * world + rank) % (2**63)


class _LossModule(nn.Module):
    """``forward`` returns the total loss and its parts, so DDP sees the whole computation in one call."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, images, targets):
        return self.loss_fn(self.model, images, targets)


def train_dense(cfg: DenseConfig) -> dict:
    """Train (or resume) a detector or segmenter as ``cfg`` says; returns the final summary."""
    info = D.setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        D.cleanup()


def _batches(task, dataset, cfg: DenseConfig, info: D.DistInfo, it: int, accum: int, ipe: int):
    """Micro-batches from iteration ``it`` on (see ``epoch_batches``); every sample's augmentation is a function of
    (seed, epoch, index), so a run resumed anywhere sees the same batches."""
    from torch.utils.data import DataLoader

    from ..engine.signals import SeededSamples

    dataset = SeededSamples(dataset, cfg.seed)
    while True:
        epoch, offset = divmod(it, ipe)
        dataset.set_epoch(epoch)
        chunks = epoch_batches(len(dataset), cfg.seed, epoch, cfg.batch_size, info.rank, info.world_size, accum)
        chunks = chunks[offset * accum: ipe * accum]
        # Its own generator, so creating the iterator leaves the global RNG (drop path) alone: see train.py.
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + info.rank)
        loader = DataLoader(dataset, batch_sampler=chunks, num_workers=cfg.workers, collate_fn=task.collate,
                            generator=gen, pin_memory=info.device.type == "cuda")
        yield from loader
        it = (epoch + 1) * ipe


def _setup_run(cfg: DenseConfig, info: D.DistInfo, task):
    per_step = cfg.batch_size * info.world_size
    global_batch = cfg.global_batch_size or per_step
    if global_batch % per_step:
        raise ConfigError(f"global batch {global_batch} is not a multiple of batch size {cfg.batch_size} × "
                          f"{info.world_size} process(es) = {per_step}; change --global-batch-size or --batch-size")
    accum = global_batch // per_step
    ipe = len(task.train_set) // info.world_size // (cfg.batch_size * accum)
    if ipe == 0:
        raise ConfigError(f"{len(task.train_set)} training images give no full iteration at global batch "
                          f"{global_batch}; lower --global-batch-size or --batch-size")
    total = cfg.epochs * ipe if isinstance(cfg, DetectConfig) else cfg.iters
    return accum, global_batch, ipe, total


def _train(cfg: DenseConfig, info: D.DistInfo) -> dict:
    import yaml

    from ..classify.train import param_groups
    from .tasks import make_task

    amp = resolve_amp(cfg.amp, info.device)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg)
    accum, global_batch, ipe, total = _setup_run(cfg, info, task)
    eval_every = cfg.eval_interval or task.default_eval_interval(ipe)
    out = Path(cfg.output)
    log = D.rank0_logger(info, out / "train.log")

    model = task.model.to(info.device)
    if cfg.grad_checkpointing:
        task.backbone(model).set_grad_checkpointing(True)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    state = {"task": task, "model": model, "optimizer": optimizer, "scaler": scaler, "cfg": cfg, "out": out,
             "info": info, "amp": amp, "accum": accum, "ipe": ipe, "total": total, "log": log,
             "metrics": MetricsLog(out, enabled=info.is_main)}
    it, best, partial = _restore(state) if cfg.resume else (0, -math.inf, None)
    if not cfg.resume:
        torch.manual_seed(cfg.seed + info.rank)
    wrapped = _wrap(model, task, info)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log(f"{task.name} {cfg.model}: {len(task.train_set)} train / {len(task.val_set)} val images, "
        f"{task.num_classes} classes, {info.world_size} process(es) on {info.device}, global batch {global_batch} "
        f"({cfg.batch_size} x {info.world_size} x {accum} accumulation), lr {cfg.lr:.3g}, {total} iterations "
        f"({ipe}/epoch), amp {amp}" + (f", resuming at iteration {it}" if cfg.resume else ""))

    end = total if cfg.stop_after is None else min(total, it + cfg.stop_after)
    batches = _batches(task, task.train_set, cfg, info, it, accum, ipe)
    summary: dict = {}
    with StopSignal() as stop:
        while it < end:
            chunk_end = min(end, (it // eval_every + 1) * eval_every)
            # A run resumed inside a chunk carries on with the sums it had, so the chunk's metrics row is the one
            # an uninterrupted run writes.
            tally = partial or {"seen": 0, "loss_sum": 0.0, "parts": {}, "n": 0, "skipped": 0,
                                "skipped_samples": 0}
            partial = None
            seen_before, t0 = tally["seen"], time.perf_counter()
            it, lr = _run_chunk(state, wrapped, batches, stop, it, chunk_end, best, tally)
            row = _chunk_row(tally, it, ipe, lr, time.perf_counter() - t0, info, seen_before)
            best, summary = _end_chunk(state, it, best, row)
            # A stop that lands on the chunk's last step waits for its evaluation, so a resumed run skips none.
            if D.any_true(stop.requested, info) and it < end:
                raise _stopped(stop, it, total, out)
    if info.is_main and summary:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _restore(state: dict) -> tuple[int, float, dict | None]:
    """Load ``--resume``'s model, optimizer, scaler and this rank's RNG; (iteration, best score, this rank's
    running sums when the run stopped inside a chunk)."""
    cfg, info = state["cfg"], state["info"]
    ckpt = state["task"].read_resume(cfg.resume)
    state["model"].load_state_dict(ckpt["model"])
    state["optimizer"].load_state_dict(ckpt["optimizer"])
    if state["scaler"] is not None and ckpt.get("scaler"):
        state["scaler"].load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
    partials = ckpt.get("partial")
    partial = partials[info.rank] if partials and len(partials) == info.world_size else None
    return ckpt["iter"], ckpt.get("best", -math.inf), partial


def _wrap(model: nn.Module, task, info: D.DistInfo) -> nn.Module:
    """Model and loss in one module, under DDP (with SyncBatchNorm on GPUs) when there are several processes."""
    wrapped: nn.Module = _LossModule(model, task.loss)
    if info.enabled:
        if info.device.type == "cuda":
            wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    return wrapped


def _run_chunk(state: dict, wrapped, batches, stop: StopSignal, it: int, chunk_end: int, best: float,
               tally: dict) -> tuple[int, float]:
    """Optimiser steps up to ``chunk_end``, summed into ``tally``; (iteration reached, last lr). A requested stop
    inside the chunk writes a resumable checkpoint and raises."""
    from ..classify.train import NonFiniteLoss, _Progress, optimizer_step

    cfg, info, optimizer, out = state["cfg"], state["info"], state["optimizer"], state["out"]
    total, ipe = state["total"], state["ipe"]
    wrapped.train()
    bar = _Progress(chunk_end - it, f"iter {it + 1}-{chunk_end}/{total}", cfg.log_interval, info.is_main,
                    state["log"])
    done_before, seen_before = tally["n"] + tally["skipped"], tally["seen"]
    lr = lr_at(cfg, it, total, ipe)
    while it < chunk_end:
        lr = lr_at(cfg, it, total, ipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss, finite = _accumulate(wrapped, batches, state["task"], state["amp"], state["accum"],
                                        state["scaler"], info, tally, it)
        stop_now = D.any_true(stop.requested, info)
        if D.all_true(finite, info):
            optimizer_step(state["model"], optimizer, state["scaler"], cfg.clip_grad)
            tally["loss_sum"], tally["n"] = tally["loss_sum"] + step_loss, tally["n"] + 1
        elif cfg.nonfinite == "stop":
            raise NonFiniteLoss(f"loss is not finite at iteration {it}; stopped without overwriting "
                                f"{out / 'last.pt'} (--nonfinite skip skips such steps instead; a lower "
                                "--lr or --clip-grad usually cures it)")
        else:
            optimizer.zero_grad(set_to_none=True)
            tally["skipped"] += 1
        it += 1
        bar.update(tally["n"] + tally["skipped"] - done_before, step_loss, lr,
                   (tally["seen"] - seen_before) * info.world_size)
        if stop_now and it < chunk_end:
            bar.close()
            _save(state, it, best, None, partial=tally)
            raise _stopped(stop, it, total, out)
    bar.close()
    return it, lr


def _end_chunk(state: dict, it: int, best: float, row: dict) -> tuple[float, dict]:
    """Evaluate, log, write the metrics row, checkpoints and curves; (best score, summary)."""
    task, model, info = state["task"], state["model"], state["info"]
    D.broadcast_buffers(model, info)  # the evaluated model is the saved one (rank 0's) on every rank
    scores = task.evaluate(model, info, state["amp"])
    row.update(task.flatten_scores(scores))
    state["metrics"].append(row)
    state["log"](f"iteration {it}/{state['total']}: train loss {row['train_loss']:.4f}, {task.describe(scores)}, "
                 f"{row['train_images_per_sec']:.1f} img/s"
                 + (f", {row['skipped_steps']} step(s) skipped (non-finite loss)" if "skipped_steps" in row else "")
                 + (f", {row['skipped_images']} unreadable image(s) skipped" if "skipped_images" in row else ""))
    improved = task.primary(scores) > best
    best = max(best, task.primary(scores))
    _save(state, it, best, scores, improved)
    if info.is_main:
        state["metrics"].plot(x_key="iteration", loss_keys=task.loss_curves(row), score_keys=task.score_curves,
                              score_label=task.score_label)
    D.barrier(info)
    return best, {"iteration": it, "best": best, **row, "scores": scores}


def _stopped(stop: StopSignal, it: int, total: int, out: Path) -> RunInterrupted:
    return RunInterrupted(f"stopped by {stop.name} at iteration {it}/{total}; resume with --resume "
                          f"{out / 'last.pt'}", stop.signum or 2)


def _accumulate(wrapped, batches, task, amp, accum, scaler, info, tally, it):
    """Forward and backward over ``accum`` micro-batches; (loss, every loss finite). Backward runs on a
    non-finite loss too, so that all DDP ranks join the same gradient all-reduces before dropping the step."""
    from ..classify.train import next_batch

    step_loss, finite = 0.0, True
    for micro in range(accum):
        batch = next_batch(batches, task.cfg.batch_size, tally)
        seen = len(batch[0])
        images, targets = task.to_device(task.fill(batch), info.device)
        torch.manual_seed(micro_batch_seed(task.cfg.seed, it, micro, accum, info.rank, info.world_size))
        sync = contextlib.nullcontext() if micro == accum - 1 or not info.enabled else wrapped.no_sync()
        with sync:
            with autocast(amp, info.device):
                loss, loss_parts = wrapped(images, targets)
            loss = loss / accum
            finite = finite and bool(torch.isfinite(loss))
            (scaler.scale(loss) if scaler is not None else loss).backward()
        step_loss += loss.item()
        for k, v in loss_parts.items():
            tally["parts"][k] = tally["parts"].get(k, 0.0) + float(v) / accum
        tally["seen"] += seen
    return step_loss, finite


def _chunk_row(tally: dict, it: int, ipe: int, lr: float, elapsed: float, info: D.DistInfo,
               seen_before: int = 0) -> dict:
    """The metrics of the iterations since the last evaluation, averaged over ranks."""
    parts = tally["parts"]
    reduced = D.all_reduce_sum([tally["loss_sum"], tally["n"], tally["skipped"], tally["skipped_samples"],
                                *parts.values()], info)
    denom = max(1.0, reduced[1])
    steps = max(1.0, reduced[1] + reduced[2])
    row = {"iteration": it, "epoch": it / ipe, "lr": lr, "train_loss": reduced[0] / denom,
           **{k: v / steps for k, v in zip(parts, reduced[4:])},
           "train_images_per_sec": (tally["seen"] - seen_before) * info.world_size / elapsed}
    if reduced[2]:
        row["skipped_steps"] = int(reduced[2])
    if reduced[3]:
        row["skipped_images"] = int(reduced[3])
    return row


def _save(state: dict, it: int, best: float, scores: dict | None, improved: bool = False,
          partial: dict | None = None) -> None:
    """last.pt (and best.pt) atomically, with every rank's RNG; a stop inside a chunk (``scores`` None) also
    keeps every rank's running sums of the chunk."""
    from ..classify.train import _gather_rng

    info = state["info"]
    rng = _gather_rng(info)
    partials = D.gather_objects(partial, info) if partial is not None else None
    if not info.is_main:
        return
    scaler = state["scaler"]
    ckpt = {**state["task"].checkpoint_meta(), "model": state["model"].state_dict(),
            "config": state["cfg"].to_dict(), "optimizer": state["optimizer"].state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "iter": it, "best": best, "scores": scores,
            "rng": rng}
    if partials is not None:
        ckpt["partial"] = partials
    atomic_save(ckpt, state["out"] / "last.pt")
    if improved:
        atomic_save(ckpt, state["out"] / "best.pt")

