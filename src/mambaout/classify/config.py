"""``TrainConfig``: the classification run's settings, the paper's DeiT-style ImageNet recipe as defaults."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.config import (
    ConfigBase,
    ConfigError,
    RunConfig,
    default,
    list_recipes,
    load_recipe,
    replace,
    setting,
    validate,
)
from ..engine.config import resolve_config as _resolve
from ..models.zoo import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class TrainConfig(RunConfig):
    model: str = default(RunConfig, "model", "mambaout_tiny", help="model name (a --recipe may name another)")
    data_dir: str = setting("", "ImageFolder root holding train/<class>/* and val/<class>/* (or give --train-data "
                                "and --val-data)")
    train_data: str = setting("", "training data: an ImageFolder directory, a WebDataset shard spec (brace notation "
                                  "'train-{000000..001023}.tar', a glob, or specs joined with '::') or hf:PATH (a "
                                  "Hugging Face dataset saved with save_to_disk, or a folder of its Parquet files)",
                              unset="DATA_DIR/train")
    val_data: str = setting("", "validation data, in any of --train-data's forms",
                            unset="DATA_DIR/val, or the validation split of an hf: --train-data")
    image_column: str | None = setting(None, "the image column of an hf: dataset",
                                       unset="the Image feature, else a column named image or img")
    label_column: str | None = setting(None, "the label column of an hf: dataset",
                                       unset="the ClassLabel feature, else a column named label")
    shuffle_buffer: int = setting(2000, "samples each shard reader shuffles in (shards only; more mixes better and "
                                        "holds more encoded images in memory)")
    num_classes: int | None = setting(None, "classifier size", unset="number of class folders")
    checkpoint: str | None = setting(None, "initial weights to fine-tune from (any layout); the head is "
                                           "re-initialised if its class count differs")
    recipe: str | None = setting(None, "packaged recipe name or YAML path",
                                 unset="the model's paper recipe if there is one")
    # schedule and optimiser (DeiT recipe, as the paper)
    epochs: int = setting(300, "epochs of the cosine schedule (the warm-up included)")
    warmup_epochs: int = setting(20, "linear warm-up epochs")
    cooldown_epochs: int = setting(0, "epochs at min_lr after the schedule (the official run: 10, so 310 in all)")
    sched: str = setting("step", "learning-rate updates: epoch (once per epoch, as timm 0.6.11 and the official run "
                                 "did) or step (every optimiser step)", choices=("epoch", "step"))
    lr: float | None = default(RunConfig, "lr", None, unset="lr_base × global batch / lr_base_size")
    lr_base: float = 1e-3
    lr_base_size: int = 1024
    min_lr: float = setting(1e-5, "final learning rate of the cosine schedule")
    warmup_lr: float = 1e-6
    opt_eps: float = 1e-8
    opt_betas: tuple[float, float] = (0.9, 0.999)
    # regularisation and augmentation
    drop_rate: float = 0.0
    smoothing: float = setting(0.1, "label smoothing")
    mixup: float = setting(0.8, "mixup alpha (0 = off)")
    cutmix: float = setting(1.0, "cutmix alpha (0 = off)")
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    auto_augment: str | None = setting("rand-m9-mstd0.5-inc1", "timm RandAugment spec ('none' = off)", off="none")
    color_jitter: float = setting(0.4, "colour jitter strength (timm applies it only without RandAugment; 0 = off)")
    reprob: float = setting(0.25, "random erasing probability")
    hflip: float = setting(0.5, "horizontal flip probability (0 for data that flips meaning: digits, text)")
    scale: tuple[float, float] = setting((0.08, 1.0), "RandomResizedCrop's area range, as fractions of the image")
    ratio: tuple[float, float] = setting((3 / 4, 4 / 3), "RandomResizedCrop's aspect-ratio range")
    interpolation: str = "bicubic"
    train_interpolation: str | None = setting(None, "training resize interpolation: bilinear, bicubic or random "
                                                    "(either, at random)", unset="as interpolation")
    img_size: int = setting(224, "training and evaluation resolution")
    crop_pct: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # machinery
    channels_last: bool = setting(False, "feed images in channels_last memory format")
    compile: bool = setting(False, "torch.compile the model")
    ema: bool = setting(False, "keep an exponential moving average of the weights and evaluate it too")
    ema_decay: float = setting(0.9998, "decay of the weight EMA (with --ema)")
    # fine-tuning
    head_init_scale: float | None = setting(
        None, "scale a freshly initialised classifier's weights and bias by this (ConvNeXt's head_init_scale: "
              "small logits at the start, so the pretrained features are not disturbed)", unset="as initialised")
    teacher: str | None = setting(None, "distil from this teacher: a checkpoint file, one of our model names "
                                        "(NAME or NAME.TAG: its published weights) or timm:NAME (timm's model)",
                                  unset="no distillation")
    teacher_checkpoint: str | None = setting(None, "weights for a named --teacher (ours or timm's) instead of its "
                                                   "published ones")
    distill: str = setting("soft", "with --teacher: soft (KL at --distill-temperature) or hard (DeiT's hard-label "
                                   "loss on the teacher's top-1)", choices=("soft", "hard"))
    distill_temperature: float = setting(1.0, "softmax temperature of soft distillation (DeiT: 1)")
    distill_alpha: float = setting(0.5, "weight of the distillation loss; the label loss gets 1 - alpha (DeiT: 0.5)")
    linear_probe: bool = setting(False, "train only the classifier on frozen features (computed once, without "
                                        "augmentation, so an epoch is one pass of the classifier)")

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.epochs > 0, "epochs", "a positive number"),
            (self.img_size >= 32, "img_size", "at least 32 (the network downsamples 32×)"),
            (0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", f"between 0 and epochs ({self.epochs})"),
            (self.cooldown_epochs >= 0, "cooldown_epochs", "0 or more"),
            (0.0 <= self.smoothing < 1.0, "smoothing", "in [0, 1)"),
            (self.shuffle_buffer > 0, "shuffle_buffer", "a positive number"),
            (self.head_init_scale is None or self.head_init_scale > 0, "head_init_scale", "a positive number"),
            (self.distill_temperature > 0, "distill_temperature", "a positive number"),
            (0 <= self.distill_alpha <= 1, "distill_alpha", "in [0, 1]"),
            (not (self.teacher and self.linear_probe), "teacher", "unset with --linear-probe (a probe trains on "
                                                                   "features, a teacher needs images)"),
        ]

    def train_source(self) -> str:
        """Where the training images are: ``train_data``, else ``data_dir/train``."""
        return self.train_data or (str(Path(self.data_dir) / "train") if self.data_dir else "")

    def val_source(self) -> str:
        """Where the validation images are: ``val_data``, else ``data_dir/val``, else the validation split of an
        ``hf:`` training dataset; ``ConfigError`` when none is given."""
        if self.val_data:
            return self.val_data
        if self.data_dir:
            return str(Path(self.data_dir) / "val")
        if self.train_data.startswith("hf:"):
            return self.train_data
        raise ConfigError("no validation data: give --val-data (or --data-dir with train/ and val/)", "val_data")


def resolve_config(overrides: dict[str, Any] | None = None, recipe: str | None = None, cls: type = TrainConfig):
    """Defaults of ``cls`` (``TrainConfig``), then the recipe, then ``overrides`` (None = unset).

    Without a recipe, ``choose_recipe`` picks one: ``finetune`` for pretrained weights on a small dataset, else a
    paper model's own (the default, Tiny, too): the official run's size settings (drop path, the 4096 global
    batch, the per-epoch schedule with its cool-down), whichever way it was asked for."""
    overrides = dict(overrides or {})
    if cls is TrainConfig and overrides.get("recipe") is None:
        recipe = recipe or choose_recipe(overrides)[0]
    return _resolve(overrides, recipe, cls=cls)


# Below this many training images, starting from trained weights picks the `finetune` recipe: the ImageNet recipe's
# Mixup/CutMix and heavy RandAugment are tuned for 1.28M images and drown a small dataset's signal.
FINETUNE_BELOW = 100_000


def choose_recipe(overrides: dict[str, Any]) -> tuple[str | None, str]:
    """(the recipe to use when none is given, why): ``finetune`` when starting from weights (``pretrained`` or
    ``checkpoint``) on fewer than ``FINETUNE_BELOW`` training images; else the model's paper recipe if it has one."""
    model = overrides.get("model")
    start = "--pretrained" if overrides.get("pretrained") else "--checkpoint" if overrides.get("checkpoint") else None
    if start:
        images = _count_training_images(overrides)
        if images is not None and images < FINETUNE_BELOW:
            return "finetune", f"{start} on {images:,} training images (fewer than {FINETUNE_BELOW:,})"
        if images is not None:
            paper = model_recipe(model)
            return paper, (f"{start} on {images:,} training images: "
                           + (f"{paper}'s ImageNet recipe" if paper else "the defaults"))
    paper = model_recipe(model)
    return paper, (f"the paper recipe of {paper}" if paper else "the defaults")


def _count_training_images(overrides: dict[str, Any]) -> int | None:
    """How many images the training data of ``overrides`` holds (None when none is named or it cannot be read:
    the run itself then says what is wrong with it)."""
    from ..data.sources import open_data

    train = overrides.get("train_data") or (str(Path(overrides["data_dir"]) / "train")
                                             if overrides.get("data_dir") else None)
    if not train:
        return None
    try:
        dataset, _ = open_data(train, "val", image_column=overrides.get("image_column"),
                               label_column=overrides.get("label_column"))
        return len(dataset)
    except (ConfigError, OSError, ImportError, ValueError):
        return None


def model_recipe(model: str | None) -> str | None:
    """The packaged recipe of ``model`` (default: TrainConfig's, Tiny) when it has one: a paper model's size
    recipe."""
    model = model or TrainConfig.model
    return model if isinstance(model, str) and model in list_recipes() else None


__all__ = ["ConfigBase", "ConfigError", "RunConfig", "TrainConfig", "list_recipes", "load_recipe", "replace",
           "model_recipe", "choose_recipe", "FINETUNE_BELOW", "resolve_config", "validate"]
