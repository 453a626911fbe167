"""``train(cfg)``: the paper's recipe on an ImageFolder tree, WebDataset shards or a Hugging Face dataset, on one
process or many (torchrun), as a task of the training engine (``mambaout.engine.loop``): one chunk is one epoch.

The learning rate is a pure function of the optimiser step, data order a pure function of (seed, epoch), and a
checkpoint holds the step and every RNG state, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..data.safe import collate_skip
from ..data.seeded import SeededSamples
from ..data.sources import build_loader, is_stream, open_data, source_kind
from ..data.transforms import create_eval_transform
from ..engine import distributed as D
from ..engine.loop import NonFiniteLoss, Task, next_batch, train_task
from ..engine.optim import accumulation_steps, optimizer_step, param_groups
from ..infer.evaluate import evaluate
from .config import ConfigError, TrainConfig
from .distill import Distiller, load_teacher
from .probe import feature_batches, freeze_all_but_classifier, pooled_features
from .schedule import epoch_lr, learning_rate, lr_at, schedule_rows, step_lr

__all__ = ["NonFiniteLoss", "accumulation_steps", "build_model", "epoch_lr", "learning_rate", "lr_at", "next_batch",
           "optimizer_step", "param_groups", "schedule_rows", "step_lr", "train"]


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) as ``cfg`` says; returns the summary rank 0 also writes to ``summary.json``."""
    return train_task(cfg, ClassifyTask)


def _train_transform(cfg: TrainConfig):
    """timm's training transform ending in a uint8 tensor: normalisation happens on the batch, on the device
    (``ClassifyTask.micro_batch``), as timm's prefetching loader does it. A worker then spends no time on float
    maths and hands over a quarter of the bytes."""
    from timm.data import create_transform

    try:
        return create_transform(
            input_size=cfg.img_size, is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
            color_jitter=cfg.color_jitter or None, auto_augment=cfg.auto_augment,
            interpolation=cfg.train_interpolation or cfg.interpolation, mean=cfg.mean, std=cfg.std,
            re_prob=0.0,  # random erasing comes after mixup, on the batch (ClassifyTask.micro_batch)
            use_prefetcher=True,  # uint8 out, no normalisation
        )
    except (AssertionError, KeyError, ValueError) as e:  # timm asserts on a policy string it cannot parse
        raise ConfigError(f"setting 'auto_augment' (or 'train_interpolation') is not one timm knows: "
                          f"auto_augment={cfg.auto_augment!r}, train_interpolation="
                          f"{cfg.train_interpolation or cfg.interpolation!r} ({e})") from None


def _eval_data_config(cfg: TrainConfig) -> dict:
    return {"input_size": (3, cfg.img_size, cfg.img_size), "interpolation": cfg.interpolation,
            "mean": tuple(cfg.mean), "std": tuple(cfg.std), "crop_pct": cfg.crop_pct, "crop_mode": "center"}


def build_model(cfg: TrainConfig, num_classes: int, class_names: list[str]):
    from ..models import create_model

    model = create_model(
        cfg.model, pretrained=cfg.pretrained, checkpoint_path=cfg.checkpoint, num_classes=num_classes,
        drop_path_rate=cfg.drop_path, drop_rate=cfg.drop_rate,
    )
    before = model.pretrained_cfg.get("label_names")  # a checkpoint of ours records the classes it learnt
    # A trained model's test size is the size it was trained at (the variant's 288 is for its ImageNet weights).
    own = {k: v for k, v in model.pretrained_cfg.items() if k != "test_crop_pct"}
    model.pretrained_cfg = {**own, **_eval_data_config(cfg), "test_input_size": (3, cfg.img_size, cfg.img_size),
                            "num_classes": num_classes, "label_names": list(class_names)}
    if cfg.checkpoint and before and list(before) != list(class_names) and not model.fresh_classifier:
        # Same number of classes, other classes (digits 0-4 -> 5-9): the checkpoint's classifier means nothing here.
        warnings.warn(f"{cfg.checkpoint}: its classes ({', '.join(map(str, before[:5]))}, ...) are not this data's "
                      f"({', '.join(class_names[:5])}, ...); the classifier is re-initialised", stacklevel=2)
        model.reset_classifier(num_classes)
        model.fresh_classifier = True
    if cfg.head_init_scale is not None and getattr(model, "fresh_classifier", False):
        with torch.no_grad():  # ConvNeXt's head_init_scale: a fresh classifier starting near zero logits
            for p in model.get_classifier().parameters():
                p.mul_(cfg.head_init_scale)
    if cfg.linear_probe:
        freeze_all_but_classifier(model)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def _random_erasing(cfg: TrainConfig, device):
    """timm's RandomErasing on the mixed, normalised batch, as timm 0.6.11's prefetching loader applied it in the
    official run (after ``FastCollateMixup``); per-pixel normal noise, one box at most per image."""
    if cfg.reprob <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability=cfg.reprob, mode="pixel", max_count=1, device=device)


def _criterion(cfg: TrainConfig, mixup_on: bool):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_on:
        return SoftTargetCrossEntropy()  # mixup already smooths the targets
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


class ClassifyTask(Task):
    """The training and validation images (any source of ``data.sources``), the model, Mixup/CutMix, the EMA and
    top-1/top-5."""

    name = "classify"
    initial_best = -1.0
    chunk_time_key = "epoch_time_s"

    def __init__(self, cfg: TrainConfig):
        from timm.data import Mixup

        self.cfg = cfg
        train_at, val_at = cfg.train_source(), cfg.val_source()
        if not train_at:
            raise ConfigError("no training data: give --data-dir (with train/ and val/) or --train-data", "train_data")
        opts = dict(strict=cfg.strict_data, seed=cfg.seed, image_column=cfg.image_column,
                    label_column=cfg.label_column, shuffle_buffer=cfg.shuffle_buffer)
        as_evaluated = create_eval_transform(_eval_data_config(cfg))
        if cfg.linear_probe:  # each image once, as evaluated: its features are computed once (prepare)
            train_set, self.class_names = open_data(train_at, "val", as_evaluated, **opts)
        else:
            train_set, self.class_names = open_data(train_at, "train", _train_transform(cfg), **opts)
        self.train_set = train_set if is_stream(train_set) or cfg.linear_probe else SeededSamples(train_set,
                                                                                                  cfg.seed)
        self.features = None
        self.val_set, val_classes = open_data(val_at, "val", as_evaluated, **opts)
        if val_classes != self.class_names:
            raise ConfigError(f"the classes of {val_at} differ from those of {train_at}: "
                              f"{sorted(set(val_classes) ^ set(self.class_names))[:5] or 'same names, other order'}")
        self.num_classes = cfg.num_classes or len(self.class_names)
        if self.num_classes < len(self.class_names):
            raise ConfigError(f"num_classes {self.num_classes} is smaller than the {len(self.class_names)} "
                              "class folders")
        self.model = build_model(cfg, self.num_classes, self.class_names)
        on = (cfg.mixup > 0 or cfg.cutmix > 0) and not cfg.linear_probe  # a probe mixes no images
        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                           switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                           num_classes=self.num_classes) if on else None
        self.criterion = _criterion(cfg, on)
        self.erase = self.ema = self._val_loader = None
        self.distiller = None
        if cfg.teacher:
            teacher = load_teacher(cfg.teacher, cfg.teacher_checkpoint, self.num_classes)
            self.distiller = Distiller(teacher, cfg.mean, cfg.std, self.num_classes, cfg.distill,
                                       cfg.distill_temperature, cfg.distill_alpha, img_size=cfg.img_size)

    def check(self, info: D.DistInfo) -> None:
        if self.cfg.batch_size > len(self.train_set) // info.world_size:
            raise ConfigError(f"batch size {self.cfg.batch_size} exceeds the {len(self.train_set)} training "
                              f"images per {info.world_size} process(es)")
        self.erase = None if self.cfg.linear_probe else _random_erasing(self.cfg, info.device)
        if self.distiller is not None:
            self.distiller.to(info.device)
        # (x - 255 mean) / (255 std) as x * scale + shift, in place on the float copy (measured: 15% less than
        # subtracting and dividing; a fused addcmul from uint8 is slower still, its type promotion not vectorised).
        shape = (1, 3, 1, 1)
        self.pixel_scale = torch.tensor([1 / (255 * s) for s in self.cfg.std], device=info.device).view(shape)
        self.pixel_shift = torch.tensor([-m / s for m, s in zip(self.cfg.mean, self.cfg.std)],
                                        device=info.device).view(shape)

    # -- optimisation ------------------------------------------------------------------------------------
    def peak_lr(self, global_batch: int) -> float:
        return learning_rate(self.cfg, global_batch)

    def optimizer(self, model, peak_lr, resumed=None):
        cfg = self.cfg
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=peak_lr,
                                 betas=cfg.opt_betas, eps=cfg.opt_eps)

    def prepare(self, model) -> None:
        from timm.utils import ModelEmaV3

        if self.cfg.ema:
            self.ema = ModelEmaV3(model, decay=self.cfg.ema_decay)
        if self.cfg.linear_probe:
            self.features = pooled_features(model, self.train_set, self.cfg.batch_size, self.cfg.workers)

    def wrap(self, model, info):
        if self.cfg.linear_probe:  # the loss goes through the classifier alone, on the cached features
            model = model.get_classifier()
        if info.enabled:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
        return torch.compile(model) if self.cfg.compile else model

    def schedule(self, steps_per_epoch: int, global_batch: int) -> int:
        cfg = self.cfg
        self.spe, self.run_epochs = steps_per_epoch, cfg.epochs + cfg.cooldown_epochs
        self.peak = learning_rate(cfg, global_batch)
        return self.run_epochs * steps_per_epoch

    def lr(self, step: int) -> float:
        return step_lr(self.cfg, step, self.spe, self.peak)

    def after_step(self, model, step: int) -> None:
        if self.ema is not None:
            self.ema.update(model, step=step)

    # -- data --------------------------------------------------------------------------------------------
    def chunk_end(self, step: int) -> int:
        return (step // self.spe + 1) * self.spe

    def end_step(self, start: int) -> int:
        epoch, stop_after = start // self.spe, self.cfg.stop_after
        self.end_epoch = self.run_epochs if stop_after is None else min(self.run_epochs, epoch + stop_after)
        return self.end_epoch * self.spe

    def batches(self, start: int, info: D.DistInfo, accum: int):
        """The epoch's batches for this rank, from micro-batch ``skip`` on (a resumed epoch skips what it saw).

        The order is DistributedSampler's (a function of seed and epoch) and each sample's augmentation a function
        of (seed, epoch, index) (``SeededSamples``), so the batches do not depend on where the run was resumed."""
        from torch.utils.data import DataLoader, DistributedSampler

        cfg, (epoch, first) = self.cfg, divmod(start, self.spe)
        if self.features is not None:
            return feature_batches(self.features, epoch, first * accum, self.spe * accum, cfg.batch_size, cfg.seed,
                                   info)
        if is_stream(self.train_set):
            return self._stream_batches(epoch, first, info, accum)
        sampler = DistributedSampler(self.train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed)
        sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        order = list(sampler)[first * accum * cfg.batch_size:]
        return DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.workers,
                          drop_last=True, generator=self._generator(epoch, info), pin_memory=info.device.type == "cuda",
                          persistent_workers=False, collate_fn=collate_skip)

    def _stream_batches(self, epoch: int, first: int, info: D.DistInfo, accum: int):
        """Shards: this rank's pieces of the epoch, exactly ``steps × accum`` batches, from micro-batch ``first``
        on (see ``data.shards``: every rank takes the same number of steps)."""
        from torch.utils.data import DataLoader

        cfg = self.cfg
        self.train_set.set_epoch(epoch)
        self.train_set.configure(info.rank, info.world_size, cfg.workers, cfg.batch_size,
                                 batches=self.spe * accum, skip=first * accum)
        return DataLoader(self.train_set, batch_size=None, num_workers=cfg.workers,
                          generator=self._generator(epoch, info), pin_memory=info.device.type == "cuda",
                          persistent_workers=False)

    def _generator(self, epoch: int, info: D.DistInfo) -> torch.Generator:
        """The loader's own generator: without one, creating its iterator draws worker seeds from the global RNG,
        and a loader created at a resume point would shift the drop-path stream against an uninterrupted run."""
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch * 1009 + info.rank)

    def micro_batch(self, batch, info, step, micro, accum):
        images, targets = batch
        seen = images.shape[0]
        if self.features is not None:  # pooled features, already as the classifier takes them
            return (images.to(info.device), targets.to(info.device)), seen
        if self.mixup is not None and seen % 2:
            # Mixup pairs images, so a batch made odd by an unreadable file takes one of its images twice.
            images, targets = torch.cat([images, images[:1]]), torch.cat([targets, targets[:1]])
        images, targets = images.to(info.device, non_blocking=True), targets.to(info.device)
        if images.dtype == torch.uint8:  # the training transform's pixels, normalised here
            images = images.float().mul_(self.pixel_scale).add_(self.pixel_shift)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        if self.erase is not None:
            images = self.erase(images)
        return (images, targets), seen

    def forward_loss(self, wrapped, inputs):
        images, targets = inputs
        logits = wrapped(images)
        loss = self.criterion(logits, targets)
        if self.distiller is None:
            return loss, {}
        return self.distiller.loss(logits, images, loss)

    # -- evaluation and reporting ------------------------------------------------------------------------
    def evaluate_chunk(self, run, row):
        if self.distiller is not None:  # what the teacher's forward passes cost this epoch
            row["teacher_images_per_sec"] = self.distiller.images_per_sec()
        epoch = self.step_epoch(run.step)
        if epoch % self.cfg.eval_interval and epoch != self.end_epoch:
            return None, None
        res = evaluate(run.model, self.val_loader(run.info), run.info, amp=run.amp)
        row.update(val_loss=res["loss"], top1=res["top1"], top5=res["top5"], val_images=res["images"])
        if self.ema is not None:
            res_ema = evaluate(self.ema.module, self.val_loader(run.info), run.info, amp=run.amp)
            row.update(ema_top1=res_ema["top1"], ema_top5=res_ema["top5"])
        return row["top1"], None

    def val_loader(self, info):
        if self._val_loader is None:
            self._val_loader = build_loader(self.val_set, self.cfg.batch_size, self.cfg.workers, info)
        return self._val_loader

    def step_epoch(self, step: int) -> int:
        return step // self.spe

    def start_line(self, run) -> str:
        cfg, info = self.cfg, run.info
        resumed = (f", resuming at epoch {run.step // self.spe + 1}, step {run.step % self.spe + 1}"
                   if cfg.resume else "")
        return (f"{cfg.model}: {len(self.train_set)} train / {len(self.val_set)} val images{self._from()}, "
                f"{len(self.class_names)} classes, {info.world_size} process(es) on {info.device}, global batch "
                f"{run.global_batch} ({cfg.batch_size} x {info.world_size} x {run.accum} accumulation), lr "
                f"{self.peak:.3g}, {self.spe} steps/epoch{resumed}")

    def _from(self) -> str:
        kinds = [(role, source_kind(s), s) for role, s in (("train", self.cfg.train_source()),
                                                             ("val", self.cfg.val_source()))]
        if all(kind == "folder" for _, kind, _ in kinds):
            return ""
        return " (" + ", ".join(f"{role} from {kind} {spec}" for role, kind, spec in kinds) + ")"

    def chunk_desc(self, start: int, end: int) -> str:
        return f"epoch {start // self.spe + 1}/{self.run_epochs}"

    def position(self, step: int) -> dict:
        return {"epoch": self.step_epoch(step), "step": step}

    def where(self, step: int, inside: bool) -> str:
        if not inside:
            return f"after epoch {step // self.spe}"
        return f"at epoch {step // self.spe + 1}, step {step % self.spe}/{self.spe}"

    def at_step(self, step: int) -> str:
        return f"at epoch {step // self.spe + 1}, step {step}"

    def chunk_line(self, step: int, row: dict, scores) -> str:
        return (f"epoch {row['epoch']}/{self.run_epochs}: train loss {row['train_loss']:.4f}"
                + (f", val loss {row['val_loss']:.4f}, top-1 {row['top1']:.2f}%, top-5 {row['top5']:.2f}%"
                   if "top1" in row else "")
                + f", {row['train_images_per_sec']:.0f} img/s"
                + (f" (teacher {row['teacher_images_per_sec']:.0f} img/s)" if "teacher_images_per_sec" in row else ""))

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint(self, run, common, row, scores, inside):
        cfg, model = self.cfg, run.model
        epoch, batch = divmod(run.step, self.spe)
        ckpt = {**common, "model_name": cfg.model, "model_args": {"drop_rate": cfg.drop_rate},
                "class_names": list(self.class_names), "pretrained_cfg": _plain(model.pretrained_cfg),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "epoch": epoch if inside else epoch - 1, "step": run.step, "best_top1": run.best, "metrics": row}
        if inside:
            ckpt["batch"] = batch
        return ckpt

    def read_resume(self, path) -> dict:
        from ..models.weights import read_checkpoint

        ckpt = read_checkpoint(path)
        if "optimizer" not in ckpt or not isinstance(ckpt.get("model"), dict):
            raise ConfigError(f"--resume {path} is not a checkpoint written by 'mambaout train' (no optimizer "
                              f"state); to start from its weights, pass it as --checkpoint")
        if ckpt.get("model_name") != self.cfg.model:
            raise ConfigError(f"--resume {path} is a {ckpt.get('model_name')} run, not {self.cfg.model}")
        if not ckpt.get("batch"):  # an epoch's end: its running sums, if any, belong to no epoch now
            ckpt.pop("partial", None)
        return ckpt

    def restore(self, ckpt: dict) -> tuple[int, float]:
        if self.ema is not None and ckpt.get("ema"):
            self.ema.module.load_state_dict(ckpt["ema"])
        epoch, batch = (ckpt["epoch"], ckpt["batch"]) if ckpt.get("batch") else (ckpt["epoch"] + 1, 0)
        return epoch * self.spe + batch, ckpt.get("best_top1", -1.0)

    def summary(self, step: int, best: float, row: dict, scores) -> dict:
        return {"epoch": row["epoch"], "best_top1": best, **row}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
