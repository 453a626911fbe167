"""Detection and segmentation as tasks of the training engine (``mambaout.engine.loop``).

Dense recipes count iterations rather than epochs (mmdetection's 1× schedule is 12 epochs with steps at epochs 8
and 11; mmsegmentation's is 160k iterations), so a chunk is an evaluation interval of iterations; the data order
is a pure function of (seed, data epoch, rank), and a resumed run skips exactly the batches it had already seen.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..data.seeded import SeededSamples
from ..engine import distributed as D
from ..engine.loop import Task, train_task
from ..engine.optim import scale_by_layer
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


def schedule_rows(cfg: DenseConfig, iters_per_epoch: int | None = None, every: int = 100) -> list[tuple]:
    """(iteration, lr) every ``every`` iterations and where the schedule turns: the warm-up's end, the detector's
    lr steps, the last iteration. Detection needs ``iters_per_epoch`` (its schedule counts epochs)."""
    if isinstance(cfg, DetectConfig):
        if not iters_per_epoch:
            raise ValueError("a detection schedule needs the iterations per epoch")
        total, turns = cfg.epochs * iters_per_epoch, [s * iters_per_epoch for s in cfg.steps()]
    else:
        total, turns = cfg.iters, []
    points = set(range(0, total, every)) | {cfg.warmup_iters, *turns, total - 1}
    return [(it, lr_at(cfg, it, total, iters_per_epoch or 1)) for it in sorted(p for p in points if 0 <= p < total)]


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


def norm_exempt_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay as Swin's mmdet/mmseg configs set it (``custom_keys={'norm': decay_mult=0}``): none on the
    LayerNorms, decay on everything else, biases and the segmentation heads' BatchNorm included. SSM parameters
    that flag themselves (a lab backbone's ``A_log``) stay exempt, as in Mamba."""
    exempt = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))
              for p in m.parameters(recurse=False)}
    groups = ([], [])
    for p in model.parameters():
        if p.requires_grad:
            groups[id(p) in exempt or getattr(p, "_no_weight_decay", False)].append(p)
    return [{"params": groups[0], "weight_decay": weight_decay}, {"params": groups[1], "weight_decay": 0.0}]


class RecipeWarning(UserWarning):
    """A run that will work but is probably not the one meant: no ImageNet start, a schedule that never leaves its
    warm-up, BatchNorm on tiny micro-batches."""


PAPER_BACKBONES = ("mambaout_tiny", "mambaout_small", "mambaout_base")  # the paper's COCO and ADE20K backbones


def recipe_warnings(cfg: DenseConfig, total: int, global_batch: int) -> list[str]:
    """One line for each setting of ``cfg`` that departs from the paper in a way its user likely did not mean."""
    out = []
    if cfg.model in PAPER_BACKBONES and not cfg.pretrained and not cfg.checkpoint and not cfg.resume:
        out.append(f"{cfg.model} starts from random weights: the paper's numbers start from ImageNet weights "
                   "(--pretrained, or --checkpoint FILE)")
    if cfg.warmup_iters >= total:
        out.append(f"the {cfg.warmup_iters}-iteration warm-up is at least the whole run ({total} iterations): the "
                   "learning rate never reaches --lr (lower --warmup-iters)")
    info = D.current()
    # SyncBatchNorm pools the statistics of every GPU of a step, never those of accumulated micro-batches.
    bn_images = cfg.batch_size * (info.world_size if info.device.type == "cuda" else 1)
    if isinstance(cfg, SegmentConfig) and bn_images < min(8, global_batch):
        out.append(f"UperNet's BatchNorm takes its statistics from {bn_images} image(s) at a time, not from the "
                   f"global batch of {global_batch} (the paper: SyncBN over 8 GPUs x 2 images); so few images "
                   "give noisier statistics")
    return out


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
    from . import tasks

    return train_task(cfg, lambda c: tasks.make_task(c))  # looked up per call: tests and plug-ins may replace it


class DenseTraining(Task):
    """The engine's side of ``DenseTask``: iteration schedules, micro-batch dealing and seeding, and the dense
    checkpoint and metrics layout."""

    cfg: DenseConfig
    initial_best = -math.inf

    def default_eval_interval(self, iters_per_epoch: int) -> int:
        return iters_per_epoch

    # Supplied by DenseTask and its subclasses (mambaout.dense.tasks).
    def loss(self, model, images, targets):
        raise NotImplementedError

    def evaluate(self, model, info, amp: str) -> dict:
        raise NotImplementedError

    def optimizer(self, model, peak_lr, resumed=None):
        groups = scale_by_layer(norm_exempt_groups(model, self.cfg.weight_decay), self.backbone(model),
                                self.cfg.layer_decay)
        if resumed is not None and resumed != [len(g["params"]) for g in groups]:
            from ..engine.optim import param_groups

            before = param_groups(model, self.cfg.weight_decay)  # every 1-D parameter exempt: before #16
            if resumed == [len(g["params"]) for g in before]:
                warnings.warn("resuming with the weight-decay groups this run started with (no decay on any 1-D "
                              "parameter); a new run decays biases, as Swin's configs do", RecipeWarning,
                              stacklevel=2)
                groups = before
        return torch.optim.AdamW(groups, lr=peak_lr)

    def prepare(self, model) -> None:
        if self.cfg.grad_checkpointing:
            self.backbone(model).set_grad_checkpointing(True)

    def wrap(self, model, info):
        """Model and loss in one module, under DDP (with SyncBatchNorm on GPUs) when there are several
        processes."""
        wrapped: nn.Module = _LossModule(model, self.loss)
        if info.enabled:
            if info.device.type == "cuda":
                wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
            wrapped = nn.parallel.DistributedDataParallel(
                wrapped, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters)
        return wrapped

    def schedule(self, steps_per_epoch: int, global_batch: int) -> int:
        cfg = self.cfg
        self.ipe = steps_per_epoch
        self.total = cfg.epochs * steps_per_epoch if isinstance(cfg, DetectConfig) else cfg.iters
        self.eval_every = cfg.eval_interval or self.default_eval_interval(steps_per_epoch)
        for message in recipe_warnings(cfg, self.total, global_batch):
            warnings.warn(message, RecipeWarning, stacklevel=2)
        return self.total

    def lr(self, step: int) -> float:
        return lr_at(self.cfg, step, self.total, self.ipe)

    def chunk_end(self, step: int) -> int:
        return (step // self.eval_every + 1) * self.eval_every

    def end_step(self, start: int) -> int:
        return self.total if self.cfg.stop_after is None else min(self.total, start + self.cfg.stop_after)

    def batches(self, start: int, info: D.DistInfo, accum: int):
        """Micro-batches from iteration ``start`` on (see ``epoch_batches``); every sample's augmentation is a
        function of (seed, epoch, index), so a run resumed anywhere sees the same batches."""
        from torch.utils.data import DataLoader

        cfg, ipe = self.cfg, self.ipe
        dataset = SeededSamples(self.train_set, cfg.seed)
        while True:
            epoch, offset = divmod(start, ipe)
            dataset.set_epoch(epoch)
            chunks = epoch_batches(len(dataset), cfg.seed, epoch, cfg.batch_size, info.rank, info.world_size,
                                   accum)[offset * accum: ipe * accum]
            # Its own generator, so creating the iterator leaves the global RNG (drop path) alone.
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + info.rank)
            yield from DataLoader(dataset, batch_sampler=chunks, num_workers=cfg.workers, collate_fn=self.collate,
                                  generator=gen, pin_memory=info.device.type == "cuda")
            start = (epoch + 1) * ipe

    def micro_batch(self, batch, info, step, micro, accum):
        inputs = self.to_device(self.fill(batch), info.device)
        torch.manual_seed(micro_batch_seed(self.cfg.seed, step, micro, accum, info.rank, info.world_size))
        return inputs, len(batch[0])

    def forward_loss(self, wrapped, inputs):
        images, targets = inputs
        return wrapped(images, targets)

    def evaluate_chunk(self, run, row):
        scores = self.evaluate(run.model, run.info, run.amp)
        row.update(self.flatten_scores(scores))
        return self.primary(scores), scores

    def start_line(self, run) -> str:
        cfg, info = self.cfg, run.info
        return (f"{self.name} {cfg.model}: {len(self.train_set)} train / {len(self.val_set)} val images, "
                f"{self.num_classes} classes, {info.world_size} process(es) on {info.device}, global batch "
                f"{run.global_batch} ({cfg.batch_size} x {info.world_size} x {run.accum} accumulation), lr "
                f"{cfg.lr:.3g}, {self.total} iterations ({self.ipe}/epoch), amp {run.amp}"
                + (f", resuming at iteration {run.step}" if cfg.resume else ""))

    def chunk_desc(self, start: int, end: int) -> str:
        return f"iter {start + 1}-{end}/{self.total}"

    def position(self, step: int) -> dict:
        return {"iteration": step, "epoch": step / self.ipe}

    def where(self, step: int, inside: bool) -> str:
        return f"at iteration {step}/{self.total}"

    def at_step(self, step: int) -> str:
        return f"at iteration {step}"

    def chunk_line(self, step: int, row: dict, scores) -> str:
        return (f"iteration {step}/{self.total}: train loss {row['train_loss']:.4f}, {self.describe(scores)}, "
                f"{row['train_images_per_sec']:.1f} img/s")

    def plot(self, metrics, row) -> None:
        metrics.plot(x_key="iteration", loss_keys=self.loss_curves(row), score_keys=self.score_curves,
                     score_label=self.score_label)

    def checkpoint(self, run, common, row, scores, inside):
        return {**self.checkpoint_meta(), **common, "iter": run.step, "best": run.best, "scores": scores}

    def restore(self, ckpt: dict) -> tuple[int, float]:
        return ckpt["iter"], ckpt.get("best", -math.inf)

    def summary(self, step: int, best: float, row: dict, scores) -> dict:
        return {"iteration": step, "best": best, **row, "scores": scores}
