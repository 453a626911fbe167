"""Settings of the detection and segmentation trainers: typed defaults (the paper's recipes) < recipe YAML <
command-line flags, resolved by the same code as ``mambaout train``'s (``mambaout.config.resolve_config``).

The defaults are the paper's COCO 1× Mask R-CNN and ADE20K 160k UperNet settings; ``detect_quickstart`` and
``segment_quickstart`` recipes shrink them to the generated shapes data on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigBase


@dataclass
class DenseConfig(ConfigBase):
    # what to train, on what
    model: str = "mambaout_tiny"  # the backbone: any MambaOut variant (lab mixers too)
    data_dir: str = ""
    output: str = "runs/dense"
    num_classes: int | None = None  # default: the dataset's
    pretrained: bool = False  # the backbone's published ImageNet weights
    checkpoint: str | None = None  # ImageNet backbone weights (any layout) or a detector/segmenter of ours
    resume: str | None = None  # last.pt of an interrupted run
    frozen_stages: int = -1  # freeze the stem and stages 0..n (-1: none)
    drop_path: float | None = None  # default: 0.3 Tiny/Small, 0.6 Base (the paper), 0.1 otherwise
    # optimisation (AdamW, no decay on norms and biases)
    batch_size: int = 2  # per process
    global_batch_size: int | None = 16  # images per optimiser step over all processes (None: batch × world)
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_iters: int = 1000
    warmup_ratio: float = 0.001  # warm-up starts at lr × this
    clip_grad: float | None = None
    # machinery
    amp: str = "auto"  # auto (fp16 on CUDA, as the paper; none on CPU) | none | bf16 | fp16
    grad_checkpointing: bool = False
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    log_interval: int = 20
    eval_interval: int | None = None  # iterations between evaluations and checkpoints (default: per task)
    stop_after: int | None = None  # end this invocation after this many iterations (continue with --resume)
    eval_batch_size: int = 1
    strict_data: bool = False  # fail on an unreadable image instead of skipping it with a warning
    nonfinite: str = "stop"  # a NaN/inf loss: stop (keeping the last good checkpoint) | skip the step and count it
    recipe: str | None = None

    task = "dense"

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.amp in ("auto", "none", "bf16", "fp16"), "amp", "one of auto, none, bf16, fp16"),
            (self.nonfinite in ("stop", "skip"), "nonfinite", "stop or skip"),
            (self.device in ("auto", "cpu", "cuda"), "device", "one of auto, cpu, cuda"),
            (self.batch_size > 0, "batch_size", "a positive number"),
            (self.global_batch_size is None or self.global_batch_size > 0, "global_batch_size",
             "a positive number"),
            (self.lr > 0, "lr", "a positive number"),
            (self.weight_decay >= 0, "weight_decay", "0 or more"),
            (self.warmup_iters >= 0, "warmup_iters", "0 or more"),
            (0 < self.warmup_ratio <= 1, "warmup_ratio", "in (0, 1]"),
            (self.drop_path is None or 0 <= self.drop_path < 1, "drop_path", "in [0, 1)"),
            (self.frozen_stages >= -1, "frozen_stages", "-1 or a stage index"),
            (self.workers >= 0, "workers", "0 or more"),
            (self.eval_interval is None or self.eval_interval > 0, "eval_interval", "a positive number"),
            (self.stop_after is None or self.stop_after > 0, "stop_after", "a positive number"),
            (self.eval_batch_size > 0, "eval_batch_size", "a positive number"),
            (self.num_classes is None or self.num_classes > 0, "num_classes", "a positive number"),
        ]


@dataclass
class DetectConfig(DenseConfig):
    """COCO Mask R-CNN + FPN, 1× schedule: 12 epochs, lr ×0.1 at epochs 8 and 11."""

    output: str = "runs/detect"
    epochs: int = 12
    lr_steps: tuple[int, int] | None = None  # epochs where lr drops ×lr_gamma (default: 8 and 11 of 12, scaled)
    lr_gamma: float = 0.1
    min_size: int = 800  # shorter side
    max_size: int = 1333  # longer side at most
    hflip: float = 0.5
    train_split: str = "train2017"
    val_split: str = "val2017"
    anchor_sizes: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)  # one per FPN level
    # mmdetection's Mask R-CNN: RPN keeps 2000 boxes per level before NMS and 1000 after in training, 1000/1000
    # at test; 512 RoIs sampled per image for the box head; at most 100 detections per image.
    rpn_train_proposals: tuple[int, int] = (2000, 1000)
    rpn_test_proposals: tuple[int, int] = (1000, 1000)
    roi_samples: int = 512
    channels: int = 256  # FPN and mask-head width (Mask R-CNN's 256)
    box_fc: int = 1024  # box-head fully connected width
    max_detections: int = 100

    task = "detect"

    def steps(self) -> tuple[int, ...]:
        """The lr-drop epochs: as given, or the 1× schedule's 8 and 11 of 12 scaled to ``epochs``."""
        if self.lr_steps is not None:
            return tuple(self.lr_steps)
        return (max(1, round(self.epochs * 8 / 12)), max(1, round(self.epochs * 11 / 12)))

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.epochs > 0, "epochs", "a positive number"),
            (all(0 < s <= self.epochs for s in self.steps()), "lr_steps", f"epochs within 1..{self.epochs}"),
            (self.min_size >= 32, "min_size", "at least 32"),
            (self.max_size >= self.min_size, "max_size", f"at least min_size ({self.min_size})"),
            (0 <= self.hflip <= 1, "hflip", "a probability"),
            (min(*self.rpn_train_proposals, *self.rpn_test_proposals) > 0, "rpn_train_proposals",
             "positive numbers (rpn_test_proposals too)"),
            (self.roi_samples > 0 and self.max_detections > 0, "roi_samples", "positive (max_detections too)"),
        ]


@dataclass
class SegmentConfig(DenseConfig):
    """ADE20K UperNet, 160k iterations, poly schedule after a 1500-iteration warm-up."""

    output: str = "runs/segment"
    iters: int = 160_000
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)  # resize target (long, short) before the random ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    reduce_zero_label: bool = True  # ADE20K: label 0 is "other", ignored
    channels: int = 512  # UperNet width
    aux_channels: int = 256  # auxiliary FCN head width
    aux_weight: float = 0.4
    eval_mode: str = "slide"  # whole | slide
    eval_stride: int = 341

    task = "segment"

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.iters > 0, "iters", "a positive number"),
            (self.crop_size >= 32, "crop_size", "at least 32"),
            (0 < self.ratio_range[0] <= self.ratio_range[1], "ratio_range", "two ratios, low <= high"),
            (0 < self.cat_max_ratio <= 1, "cat_max_ratio", "in (0, 1]"),
            (self.eval_mode in ("whole", "slide"), "eval_mode", "whole or slide"),
            (0 < self.eval_stride <= self.crop_size, "eval_stride", f"in 1..crop_size ({self.crop_size})"),
            (self.aux_weight >= 0, "aux_weight", "0 or more"),
            (self.channels > 0, "channels", "a positive number"),
        ]


CONFIGS = {"detect": DetectConfig, "segment": SegmentConfig}
