"""Settings of the detection and segmentation trainers: typed defaults (the paper's recipes) < recipe YAML <
command-line flags, resolved by the same code as ``mambaout train``'s (``mambaout.config.resolve_config``).

The defaults are the paper's COCO 1× Mask R-CNN and ADE20K 160k UperNet settings; ``detect_quickstart`` and
``segment_quickstart`` recipes shrink them to the generated shapes data on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.config import RunConfig, default, setting


@dataclass
class DenseConfig(RunConfig):
    model: str = setting("mambaout_tiny", "backbone: a MambaOut variant, e.g. mambaout_tiny or a lab mixer like "
                                          "mambaout_femto_ssm")
    output: str = default(RunConfig, "output", "runs/dense")
    pretrained: bool = setting(False, "start the backbone from the published ImageNet weights")
    checkpoint: str | None = setting(None, "initial weights: ImageNet backbone weights in any layout, or a "
                                           "detector/segmenter checkpoint of this package to fine-tune")
    frozen_stages: int = setting(-1, "freeze the stem and stages 0..N of the backbone (-1: none)")
    drop_path: float | None = setting(None, "backbone stochastic depth",
                                      unset="detect 0.2 Tiny/Small, 0.3 Base (Swin's mmdet configs); segment 0.3 "
                                            "Tiny/Small, 0.6 Base (the paper); 0.1 otherwise")
    batch_size: int = setting(2, "images per process per micro-batch")
    global_batch_size: int | None = setting(16, "images per optimiser step over all processes (the paper's; sets "
                                                "accumulation; none: batch size × processes)")
    lr: float = setting(1e-4, "peak AdamW learning rate")
    weight_decay: float = default(RunConfig, "weight_decay", 0.05,
                                  help="AdamW weight decay (none on the LayerNorms, as Swin's configs)")
    warmup_iters: int = setting(1000, "linear warm-up iterations")
    warmup_ratio: float = 0.001  # warm-up starts at lr × this
    amp: str = default(RunConfig, "amp", "auto")
    workers: int = default(RunConfig, "workers", 2)
    log_interval: int = setting(20, "iterations between log lines when output is not a terminal")
    eval_interval: int | None = setting(None, "iterations between evaluations and checkpoints",
                                        unset="one epoch for detect, 16000 for segment")
    eval_batch_size: int = 1
    recipe: str | None = setting(None, "packaged recipe name or YAML path (e.g. detect_quickstart, "
                                       "segment_quickstart)")

    task = "dense"
    unit = "iterations"

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.warmup_iters >= 0, "warmup_iters", "0 or more"),
            (0 < self.warmup_ratio <= 1, "warmup_ratio", "in (0, 1]"),
            (self.frozen_stages >= -1, "frozen_stages", "-1 or a stage index"),
            (self.eval_batch_size > 0, "eval_batch_size", "a positive number"),
        ]


@dataclass
class DetectConfig(DenseConfig):
    """COCO Mask R-CNN + FPN, 1× schedule: 12 epochs, lr ×0.1 at epochs 8 and 11."""

    output: str = default(RunConfig, "output", "runs/detect")
    epochs: int = setting(12, "training epochs (the 1x schedule)")
    lr_steps: tuple[int, int] | None = None  # epochs where lr drops ×lr_gamma (default: 8 and 11 of 12, scaled)
    lr_gamma: float = 0.1
    min_size: int = setting(800, "shorter image side")
    max_size: int = setting(1333, "longer image side at most")
    hflip: float = 0.5
    train_split: str = setting("train2017", "training split: annotations/instances_SPLIT.json + SPLIT/")
    val_split: str = setting("val2017", "validation split")
    anchor_sizes: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)  # one per FPN level
    # mmdetection's Mask R-CNN: RPN keeps 2000 boxes per level before NMS and 1000 after in training, 1000/1000
    # at test; 512 RoIs sampled per image for the box head; at most 100 detections per image.
    rpn_train_proposals: tuple[int, int] = (2000, 1000)
    rpn_test_proposals: tuple[int, int] = (1000, 1000)
    roi_samples: int = 512
    channels: int = 256  # FPN and mask-head width (Mask R-CNN's 256)
    box_fc: int = 1024  # box-head fully connected width
    max_detections: int = 100
    box_head: str = setting("mmdet", "RoIAlign, box losses and assigners: mmdet (Swin's config: aligned RoIAlign "
                                     "with adaptive sampling, L1 losses, mmdet's assigner) or torchvision (its own)",
                            choices=("mmdet", "torchvision"))

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

    output: str = default(RunConfig, "output", "runs/segment")
    iters: int = setting(160_000, "training iterations")
    weight_decay: float = default(DenseConfig, "weight_decay", 0.01)
    warmup_iters: int = default(DenseConfig, "warmup_iters", 1500)
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    crop_size: int = setting(512, "training crop side")
    scale: tuple[int, int] = (2048, 512)  # resize target (long, short) before the random ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    reduce_zero_label: bool = True  # ADE20K: label 0 is "other", ignored
    channels: int = 512  # UperNet width
    aux_channels: int = 256  # auxiliary FCN head width
    aux_weight: float = 0.4
    eval_mode: str = setting("whole", "inference: whole (the image at once, as Swin's UperNet config) or slide "
                                      "(crop windows)", choices=("whole", "slide"))
    loss_average: str = setting("all", "the pixel loss's average: all pixels (mmseg's default, as Swin's config) "
                                       "or labelled (the labelled pixels only)", choices=("all", "labelled"))
    eval_stride: int = 341

    task = "segment"

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.iters > 0, "iters", "a positive number"),
            (self.crop_size >= 32, "crop_size", "at least 32"),
            (0 < self.ratio_range[0] <= self.ratio_range[1], "ratio_range", "two ratios, low <= high"),
            (0 < self.cat_max_ratio <= 1, "cat_max_ratio", "in (0, 1]"),
            (0 < self.eval_stride <= self.crop_size, "eval_stride", f"in 1..crop_size ({self.crop_size})"),
            (self.aux_weight >= 0, "aux_weight", "0 or more"),
            (self.channels > 0, "channels", "a positive number"),
        ]


CONFIGS = {"detect": DetectConfig, "segment": SegmentConfig}
