"""The one training loop: accumulation, AMP and the gradient scaler, the non-finite-loss policy, SIGINT/SIGTERM
stops, progress, metrics, atomic checkpoints and exact resume, for every task.

A task (``Task``: classification, detection, segmentation) says how to build its model and data, what one
micro-batch's loss is, when to evaluate and what its checkpoint records. The loop counts optimiser steps; the
run is cut into chunks (an epoch for classification, an evaluation interval for the dense tasks), each ending
with a metrics row, an evaluation when one is due and a checkpoint. The learning rate is a pure function of the
step, the data order and augmentation pure functions of (seed, epoch, index), and a checkpoint holds the step,
every rank's RNG state and, when written inside a chunk, every rank's running sums; so a resumed run continues
exactly where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..data.safe import count_samples
from ..utils.amp import autocast, resolve_amp
from ..utils.progress import Progress
from . import distributed as D
from .checkpoint import atomic_save, rng_state, set_rng_state
from .metrics_log import MetricsLog
from .optim import accumulation_steps, optimizer_step, steps_per_epoch
from .signals import RunInterrupted, StopSignal


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss with ``nonfinite: stop``; the last good checkpoint is left as it was."""


class Task:
    """What a task tells the engine. Built (after the engine seeds the RNG) with its model and its training and
    validation sets; the engine then asks it for the rest through the methods below."""

    name = "task"
    model: nn.Module
    train_set: object
    val_set: object
    num_classes: int
    initial_best = -float("inf")
    chunk_time_key: str | None = None  # the metrics row's key for the chunk's training time, if it has one

    def check(self, info: D.DistInfo) -> None:
        """Refuse, in one line, a run that cannot work on ``info.world_size`` processes."""

    def optimizer(self, model: nn.Module, peak_lr: float, resumed: list[int] | None = None) -> torch.optim.Optimizer:
        """The optimiser; ``resumed`` (the group sizes of a checkpoint that does not fit the task's groups of
        today) asks for the grouping the run was started with."""
        raise NotImplementedError

    def peak_lr(self, global_batch: int) -> float:
        return self.cfg.lr

    def prepare(self, model: nn.Module) -> None:
        """Anything that must exist before a resume loads into it (an EMA copy, activation checkpointing)."""

    def wrap(self, model: nn.Module, info: D.DistInfo) -> nn.Module:
        """The module the loss is computed through (DDP when there are several processes)."""
        raise NotImplementedError

    def schedule(self, steps_per_epoch: int, global_batch: int) -> int:
        """Set the learning-rate schedule up; returns the run's total optimiser steps."""
        raise NotImplementedError

    def lr(self, step: int) -> float:
        raise NotImplementedError

    def chunk_end(self, step: int) -> int:
        raise NotImplementedError

    def end_step(self, start: int) -> int:
        """Where this invocation stops (``stop_after``)."""
        raise NotImplementedError

    def batches(self, start: int, info: D.DistInfo, accum: int) -> Iterator:
        raise NotImplementedError

    def micro_batch(self, batch, info: D.DistInfo, step: int, micro: int, accum: int):
        """(model inputs on the device, images counted) of one collated micro-batch."""
        raise NotImplementedError

    def forward_loss(self, wrapped: nn.Module, inputs) -> tuple[torch.Tensor, dict]:
        """(total loss, its parts as detached tensors) of one micro-batch."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int) -> None:
        """After each optimiser step that was taken (an EMA update)."""

    def evaluate_chunk(self, run: Run, row: dict) -> tuple[float | None, dict | None]:
        """Evaluate when due, adding the scores to ``row``; (the score ``best.pt`` follows or None, the scores)."""
        raise NotImplementedError

    def start_line(self, run: Run) -> str:
        raise NotImplementedError

    def position(self, step: int) -> dict:
        """The first keys of a metrics row: where the run is."""
        raise NotImplementedError

    def chunk_desc(self, start: int, end: int) -> str:
        """The progress bar's label for steps ``start``..``end``."""
        raise NotImplementedError

    def where(self, step: int, inside: bool) -> str:
        """Where a run stopped after ``step`` steps, inside a chunk or at its end, in the task's words ("at epoch
        2, step 5/10", "after epoch 2", "at iteration 40/80")."""
        raise NotImplementedError

    def at_step(self, step: int) -> str:
        """Which step is being taken, in the task's words ("at epoch 2, step 14", "at iteration 40")."""
        raise NotImplementedError

    def chunk_line(self, step: int, row: dict, scores: dict | None) -> str:
        raise NotImplementedError

    def plot(self, metrics: MetricsLog, row: dict) -> None:
        metrics.plot()

    def checkpoint(self, run: Run, common: dict, row: dict, scores: dict | None, inside: bool) -> dict:
        raise NotImplementedError

    def read_resume(self, path) -> dict:
        raise NotImplementedError

    def restore(self, ckpt: dict) -> tuple[int, float]:
        """Load what only the task keeps (an EMA); (the step to continue from, the best score so far)."""
        raise NotImplementedError

    def summary(self, step: int, best: float, row: dict, scores: dict | None) -> dict:
        raise NotImplementedError


def train_task(cfg, make: Callable[[object], Task]) -> dict:
    """Train (or resume) the task ``make(cfg)`` builds; returns the summary rank 0 also writes to
    ``summary.json``."""
    info = D.setup(cfg.device)
    try:
        return Run(cfg, make, info).run()
    finally:
        D.cleanup()


def new_tally() -> dict:
    """A chunk's running sums on one rank."""
    return {"seen": 0, "loss_sum": 0.0, "steps": 0, "skipped_steps": 0, "skipped_samples": 0, "parts": {},
            "time": 0.0, "lr": 0.0}


# The running sums' names in checkpoints written before the engine was one (classification, dense).
_OLD_TALLY = {"n_loss": "steps", "n": "steps", "skipped": "skipped_steps"}


def _tally_from(partial: dict | None) -> dict | None:
    if partial is None:
        return None
    tally = new_tally()
    tally.update({_OLD_TALLY.get(k, k): v for k, v in partial.items()})
    if "time" not in partial:  # older dense sums kept no time: the chunk's rate counts from the resume on
        tally["untimed"] = tally["seen"]
    return tally


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


def seed_ranks(seed: int, rank: int) -> None:
    """Ranks draw different augmentations; parameters start equal (DDP broadcasts rank 0's)."""
    import numpy as np

    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)


class Run:
    """One invocation of a training run: the state the loop carries, and the loop."""

    def __init__(self, cfg, make: Callable[[object], Task], info: D.DistInfo):
        self.cfg, self.info = cfg, info
        self.amp = resolve_amp(cfg.amp, info.device)
        self.accum = accumulation_steps(cfg, info.world_size)
        self.global_batch = cfg.batch_size * info.world_size * self.accum
        self.out = Path(cfg.output)
        self.log = D.rank0_logger(info, self.out / "train.log")
        torch.manual_seed(cfg.seed)  # the model's initial weights
        self.task = task = make(cfg)
        task.check(info)
        self.steps_per_epoch = steps_per_epoch(len(task.train_set), cfg, info.world_size, self.accum)
        self.total = task.schedule(self.steps_per_epoch, self.global_batch)
        self.model = task.model.to(info.device)
        self.peak_lr = task.peak_lr(self.global_batch)
        self.optimizer = task.optimizer(self.model, self.peak_lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        task.prepare(self.model)
        self.metrics = MetricsLog(self.out, enabled=info.is_main)
        self.partial = None
        if cfg.resume:
            self.step, self.best = self._restore()
        else:
            self.step, self.best = 0, task.initial_best
            seed_ranks(cfg.seed, info.rank)
        self.wrapped = task.wrap(self.model, info)

    def run(self) -> dict:
        import yaml

        cfg, info, task = self.cfg, self.info, self.task
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.log(task.start_line(self))
        end = task.end_step(self.step)
        summary: dict = {}
        with StopSignal() as stop:
            while self.step < end:
                chunk_end = min(end, task.chunk_end(self.step))
                # A run resumed inside a chunk carries on with the sums it had, so the chunk's metrics row is the
                # one an uninterrupted run writes.
                tally, self.partial = self.partial or new_tally(), None
                self._run_chunk(task.batches(self.step, info, self.accum), stop, chunk_end, tally)
                summary = self._end_chunk(tally)
                # A stop that lands on the chunk's last step waits for its evaluation, so a resumed run skips none.
                if D.any_true(stop.requested, info) and self.step < end:
                    raise self._stopped(stop, inside=False)
        if info.is_main and summary:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _restore(self) -> tuple[int, float]:
        """Load ``--resume``: model, optimizer, scaler, the task's own state, this rank's RNG and its running sums
        when the run stopped inside a chunk; (step, best score)."""
        ckpt = self.task.read_resume(self.cfg.resume)
        self.model.load_state_dict(ckpt["model"])
        sizes = [len(g["params"]) for g in ckpt["optimizer"].get("param_groups", [])]
        if sizes != [len(g["params"]) for g in self.optimizer.param_groups]:
            self.optimizer = self.task.optimizer(self.model, self.peak_lr, resumed=sizes)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        step, best = self.task.restore(ckpt)
        set_rng_state(ckpt["rng"][min(self.info.rank, len(ckpt["rng"]) - 1)])
        partial = ckpt.get("partial")
        if isinstance(partial, list):  # one per rank; a different process count starts the chunk's sums afresh
            partial = partial[self.info.rank] if len(partial) == self.info.world_size else None
        elif self.info.enabled:  # one process's sums, from before they were kept per rank
            partial = None
        self.partial = _tally_from(partial)
        return step, best

    def _run_chunk(self, batches, stop: StopSignal, chunk_end: int, tally: dict) -> None:
        """Optimiser steps up to ``chunk_end``, summed into ``tally``. A requested stop inside the chunk writes a
        resumable checkpoint and raises."""
        cfg, info, task = self.cfg, self.info, self.task
        self.wrapped.train()
        batches, start = iter(batches), self.step
        bar = Progress(chunk_end - start, task.chunk_desc(start, chunk_end), cfg.log_interval, info.is_main,
                       self.log)
        t0, seen0 = time.perf_counter() - tally["time"], tally["seen"]
        while self.step < chunk_end:
            tally["lr"] = lr = task.lr(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            step_loss, finite = self._accumulate(batches, tally)
            stop_now = D.any_true(stop.requested, info)
            if D.all_true(finite, info):
                optimizer_step(self.model, self.optimizer, self.scaler, cfg.clip_grad)
                task.after_step(self.model, self.step)
                tally["loss_sum"], tally["steps"] = tally["loss_sum"] + step_loss, tally["steps"] + 1
            elif cfg.nonfinite == "stop":
                raise NonFiniteLoss(f"loss is not finite {task.at_step(self.step)}; stopped without "
                                    f"overwriting {self.out / 'last.pt'} (--nonfinite skip skips such steps "
                                    "instead; a lower --lr or --clip-grad usually cures it)")
            else:
                self.optimizer.zero_grad(set_to_none=True)
                tally["skipped_steps"] += 1
            self.step += 1
            bar.update(self.step - start, (tally["seen"] - seen0) * info.world_size, loss=step_loss, lr=lr)
            if stop_now and self.step < chunk_end:
                bar.close()
                tally["time"] = time.perf_counter() - t0
                self._save({}, None, partial=tally)
                raise self._stopped(stop, inside=True)
        bar.close()
        tally["time"] = time.perf_counter() - t0

    def _accumulate(self, batches, tally: dict) -> tuple[float, bool]:
        """Forward and backward over the step's micro-batches; (loss, every loss finite). Backward runs on a
        non-finite loss too, so that all DDP ranks join the same gradient all-reduces before dropping the step."""
        info, accum, task = self.info, self.accum, self.task
        step_loss, finite = 0.0, True
        for micro in range(accum):
            batch = next_batch(batches, self.cfg.batch_size, tally)
            inputs, seen = task.micro_batch(batch, info, self.step, micro, accum)
            last = micro == accum - 1 or not info.enabled
            with contextlib.nullcontext() if last else self.wrapped.no_sync():
                with autocast(self.amp, info.device):
                    loss, parts = task.forward_loss(self.wrapped, inputs)
                loss = loss / accum
                finite = finite and bool(torch.isfinite(loss))
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            step_loss += loss.item()
            for k, v in parts.items():
                tally["parts"][k] = tally["parts"].get(k, 0.0) + float(v) / accum
            tally["seen"] += seen
        return step_loss, finite

    def _train_row(self, tally: dict) -> dict:
        """The chunk's training numbers, summed over ranks."""
        parts = tally["parts"]
        loss_sum, steps, skipped, bad, *part_sums = D.all_reduce_sum(
            [tally["loss_sum"], tally["steps"], tally["skipped_steps"], tally["skipped_samples"], *parts.values()],
            self.info)
        taken = max(1.0, steps + skipped)
        row = {**self.task.position(self.step), "lr": tally["lr"], "train_loss": loss_sum / max(1.0, steps),
               **{k: v / taken for k, v in zip(parts, part_sums)},
               "train_images_per_sec": (tally["seen"] - tally.get("untimed", 0)) * self.info.world_size
               / max(tally["time"], 1e-9)}
        if self.task.chunk_time_key:
            row[self.task.chunk_time_key] = tally["time"]
        if skipped:
            row["skipped_steps"] = int(skipped)
        if self.info.enabled:  # every rank must take each step (a DDP all-reduce waits for all): shown, not assumed
            row["rank_steps"] = D.gather_objects(int(tally["steps"] + tally["skipped_steps"]), self.info)
        if bad:
            row["skipped_images"] = int(bad)
        return row

    def _end_chunk(self, tally: dict) -> dict:
        """Metrics row, evaluation when due, log line, checkpoints and curves; returns the run's summary so far."""
        info, task = self.info, self.task
        row = self._train_row(tally)
        D.broadcast_buffers(self.model, info)  # the evaluated model is the saved one (rank 0's) on every rank
        score, scores = task.evaluate_chunk(self, row)
        self.metrics.append(row)
        self.log(task.chunk_line(self.step, row, scores)
                 + (f", {row['skipped_steps']} step(s) skipped (non-finite loss)" if "skipped_steps" in row else "")
                 + (f", {row['skipped_images']} unreadable image(s) skipped" if "skipped_images" in row else ""))
        improved = score is not None and score > self.best
        if score is not None:
            self.best = max(self.best, score)
        self._save(row, scores, improved=improved)
        if info.is_main:
            task.plot(self.metrics, row)
        D.barrier(info)
        return task.summary(self.step, self.best, row, scores)

    def _save(self, row: dict, scores: dict | None, improved: bool = False, partial: dict | None = None) -> None:
        """last.pt (and best.pt) atomically, with every rank's RNG; a stop inside a chunk (``partial``) also keeps
        every rank's running sums."""
        rng = D.gather_objects(rng_state(), self.info)
        partials = D.gather_objects(partial, self.info) if partial is not None else None
        if not self.info.is_main:
            return
        common = {"model": self.model.state_dict(), "config": self.cfg.to_dict(),
                  "optimizer": self.optimizer.state_dict(),
                  "scaler": self.scaler.state_dict() if self.scaler else None, "rng": rng}
        ckpt = self.task.checkpoint(self, common, row, scores, inside=partials is not None)
        if partials is not None:
            ckpt["partial"] = partials
        atomic_save(ckpt, self.out / "last.pt")
        if improved:
            atomic_save(ckpt, self.out / "best.pt")

    def _stopped(self, stop: StopSignal, inside: bool) -> RunInterrupted:
        return RunInterrupted(f"stopped by {stop.name} {self.task.where(self.step, inside)}; resume with --resume "
                              f"{self.out / 'last.pt'}", stop.signum or 2)
