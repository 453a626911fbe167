"""What the training engine needs to know about each dense task: data, model, loss, evaluation, checkpoints.

``DetectTask`` wires COCO data and Mask R-CNN (``coco``, ``detection``); ``SegmentTask`` wires ADE20K data and
UperNet (``ade``, ``segmentation``). Both build the backbone through ``MambaOutBackbone``, so every checkpoint
layout, ``--pretrained`` and the lab's token mixers work for them too.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..engine.config import ConfigError
from ..models.weights import read_checkpoint
from .config import CONFIGS, DenseConfig, DetectConfig, SegmentConfig
from .train import DenseTraining


def _is_dense_checkpoint(path: str | Path | None) -> dict | None:
    """The checkpoint's contents when it is a detector/segmenter written by this package, else None."""
    if path is None or Path(path).suffix == ".safetensors":
        return None
    data = read_checkpoint(path)
    return data if isinstance(data, dict) and data.get("task") in CONFIGS else None


def load_matching(model: nn.Module, state: dict, source: str) -> None:
    """Load every tensor whose name and shape match; warn about the rest (a new class count re-initialises the
    class-specific predictors only)."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    if not usable:
        raise ConfigError(f"{source}: no weight matches this model (is it a checkpoint of another task?)")
    if skipped or missing:
        warnings.warn(f"{source}: {len(skipped)} tensors not loaded (shape or name differs, e.g. "
                      f"{skipped[:3]}); {len(missing)} left at their initial values", stacklevel=2)
    model.load_state_dict(usable, strict=False)


class DenseTask(DenseTraining):
    name = "dense"
    find_unused_parameters = False
    score_curves: tuple = ()
    score_label = ""

    def __init__(self, cfg: DenseConfig, build_data: bool = True, num_classes: int | None = None,
                 class_names: list[str] | None = None):
        self.cfg = cfg
        if build_data:
            self.train_set, self.val_set = self.train_dataset(), self.val_dataset()
            class_names = list(self.train_set.class_names)
            if list(self.val_set.class_names) != class_names:
                raise ConfigError(f"the validation split's classes differ from the training split's: "
                                  f"{sorted(set(self.val_set.class_names) ^ set(class_names))[:5]}")
        self.class_names = list(class_names or [])
        self.num_classes = cfg.num_classes or num_classes or len(self.class_names)
        if self.num_classes < len(self.class_names):
            raise ConfigError(f"num_classes {self.num_classes} is smaller than the dataset's "
                              f"{len(self.class_names)} classes")
        self.model = self.build_model()

    # -- model -------------------------------------------------------------------------------------------
    def _backbone_source(self) -> tuple[dict | None, dict]:
        """(a dense checkpoint to load whole, keyword arguments for the backbone's own weights)."""
        cfg = self.cfg
        dense = _is_dense_checkpoint(cfg.checkpoint)
        if dense is not None:
            if dense["task"] != self.name:
                raise ConfigError(f"--checkpoint {cfg.checkpoint} is a {dense['task']} model, not {self.name}")
            return dense, {}
        return None, {"checkpoint_path": cfg.checkpoint, "pretrained": cfg.pretrained}

    def build_model(self) -> nn.Module:
        dense, weights = self._backbone_source()
        model = self._build(weights)
        if dense is not None:
            load_matching(model, dense["model"], str(self.cfg.checkpoint))
        return model

    def train_dataset(self):
        raise NotImplementedError

    def val_dataset(self):
        raise NotImplementedError

    def _build(self, weights: dict) -> nn.Module:
        raise NotImplementedError

    def backbone(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_meta(self) -> dict:
        return {"task": self.name, "model_name": self.cfg.model, "num_classes": self.num_classes,
                "class_names": self.class_names}

    def read_resume(self, path: str | Path) -> dict:
        ckpt = read_checkpoint(path)
        if ckpt.get("task") != self.name or "optimizer" not in ckpt:
            raise ConfigError(f"--resume {path} is not a {self.name} training checkpoint of this package")
        if ckpt.get("model_name") != self.cfg.model:
            raise ConfigError(f"--resume {path} trained {ckpt.get('model_name')}, not {self.cfg.model}")
        return ckpt

    def fill(self, batch):
        """The training batch as the model can take it (see ``SegmentTask.fill``)."""
        return batch

    def loss_curves(self, row: dict) -> tuple:
        return (("train_loss", "total"),) + tuple((k, k.replace("loss_", "")) for k in row if k.startswith("loss_"))


class DetectTask(DenseTask):
    name = "detect"
    score_curves = (("bbox_AP", "box AP"), ("bbox_AP50", "box AP50"), ("segm_AP", "mask AP"))
    score_label = "COCO AP (fraction)"

    def train_dataset(self):
        from .coco import CocoDetection

        cfg: DetectConfig = self.cfg  # type: ignore[assignment]
        return CocoDetection(Path(cfg.data_dir), cfg.train_split, train=True, hflip=cfg.hflip,
                             strict=cfg.strict_data)

    def val_dataset(self):
        from .coco import CocoDetection

        cfg: DetectConfig = self.cfg  # type: ignore[assignment]
        return CocoDetection(Path(cfg.data_dir), cfg.val_split, train=False, strict=cfg.strict_data)

    def _build(self, weights: dict) -> nn.Module:
        from .detection import detector_from_name

        cfg: DetectConfig = self.cfg  # type: ignore[assignment]
        from .backbone import DETECT_DROP_PATH

        drop_path = cfg.drop_path if cfg.drop_path is not None else DETECT_DROP_PATH.get(cfg.model)
        return detector_from_name(
            cfg.model, self.num_classes, drop_path_rate=drop_path, frozen_stages=cfg.frozen_stages,
            min_size=cfg.min_size, max_size=cfg.max_size, anchor_sizes=tuple((s,) for s in cfg.anchor_sizes),
            rpn_pre_nms_top_n_train=cfg.rpn_train_proposals[0], rpn_post_nms_top_n_train=cfg.rpn_train_proposals[1],
            rpn_pre_nms_top_n_test=cfg.rpn_test_proposals[0], rpn_post_nms_top_n_test=cfg.rpn_test_proposals[1],
            box_batch_size_per_image=cfg.roi_samples, box_detections_per_img=cfg.max_detections,
            channels=cfg.channels, box_fc=cfg.box_fc, box_head=cfg.box_head, **weights)

    def backbone(self, model):
        return model.backbone.backbone

    @staticmethod
    def collate(batch):
        from .coco import collate

        return collate(batch)

    @staticmethod
    def to_device(batch, device):
        images, targets = batch
        return ([im.to(device, non_blocking=True) for im in images],
                [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets])

    @staticmethod
    def loss(model, images, targets):
        parts = model(images, targets)
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}

    def evaluate(self, model, info, amp: str) -> dict:
        from .coco import evaluate_coco

        return evaluate_coco(model, self.val_set, device=info.device, batch_size=self.cfg.eval_batch_size,
                             amp=amp, progress=info.is_main and sys.stderr.isatty())

    @staticmethod
    def flatten_scores(scores: dict) -> dict:
        return {f"{kind}_{k}": v for kind in ("bbox", "segm") for k, v in scores.get(kind, {}).items()}

    @staticmethod
    def primary(scores: dict) -> float:
        return scores["bbox"]["AP"]

    @staticmethod
    def describe(scores: dict) -> str:
        b, s = scores["bbox"], scores["segm"]
        return f"box AP {b['AP']:.3f} (AP50 {b['AP50']:.3f}), mask AP {s['AP']:.3f} (AP50 {s['AP50']:.3f})"


class SegmentTask(DenseTask):
    name = "segment"
    score_curves = (("mIoU", "mIoU"), ("aAcc", "pixel accuracy"))
    score_label = "fraction"

    def _ade(self, split: str, train: bool):
        from .ade import AdeSegmentation

        cfg: SegmentConfig = self.cfg  # type: ignore[assignment]
        root = Path(cfg.data_dir)
        names_file = root / "classes.txt"
        names = ([n.strip() for n in names_file.read_text().splitlines() if n.strip()]
                 if names_file.is_file() else None)
        num_classes = cfg.num_classes or (len(names) if names else 150)
        if names and len(names) != num_classes:
            if len(names) > num_classes:
                raise ConfigError(f"{names_file} names {len(names)} classes but num_classes is {num_classes}")
            names += [f"class_{i}" for i in range(len(names), num_classes)]  # extra classes to fine-tune into
        extra = ({"ratio_range": tuple(cfg.ratio_range), "hflip": cfg.hflip, "cat_max_ratio": cfg.cat_max_ratio}
                 if train else {})
        return AdeSegmentation(root, split, train=train, crop_size=cfg.crop_size, scale=tuple(cfg.scale),
                               reduce_zero_label=cfg.reduce_zero_label, num_classes=num_classes,
                               class_names=names, strict=cfg.strict_data, **extra)

    def train_dataset(self):
        return self._ade("training", train=True)

    def val_dataset(self):
        return self._ade("validation", train=False)

    def _build(self, weights: dict) -> nn.Module:
        from .segmentation import segmentor_from_name

        cfg: SegmentConfig = self.cfg  # type: ignore[assignment]
        return segmentor_from_name(cfg.model, self.num_classes, drop_path_rate=cfg.drop_path,
                                   frozen_stages=cfg.frozen_stages, channels=cfg.channels,
                                   aux_weight=cfg.aux_weight, aux_channels=cfg.aux_channels,
                                   loss_average=cfg.loss_average, **weights)

    def backbone(self, model):
        return model.backbone

    @staticmethod
    def collate(batch):
        from .ade import collate

        return collate(batch)

    @staticmethod
    def to_device(batch, device):
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def fill(self, batch):
        """A training batch left with one image by an unreadable file gets that image twice: UperNet's 1×1
        pooling branch has BatchNorm, which cannot train on a single value per channel."""
        images, labels = batch
        if len(images) == 1 and self.cfg.batch_size > 1:
            return images.repeat(2, 1, 1, 1), labels.repeat(2, *([1] * (labels.ndim - 1)))
        return batch

    @staticmethod
    def loss(model, images, labels):
        total, parts = model.loss(images, labels)
        return total, {k: v.detach() for k, v in parts.items()}

    def default_eval_interval(self, iters_per_epoch: int) -> int:
        return 16_000  # mmsegmentation's 160k schedule evaluates every 16k iterations

    def evaluate(self, model, info, amp: str, scales=(1.0,), flip: bool = False) -> dict:
        from .ade import evaluate_segmentation

        cfg: SegmentConfig = self.cfg  # type: ignore[assignment]
        return evaluate_segmentation(model, self.val_set, device=info.device, mode=cfg.eval_mode,
                                     crop_size=cfg.crop_size, stride=cfg.eval_stride, scales=scales, flip=flip,
                                     amp=amp, progress=info.is_main and sys.stderr.isatty())

    @staticmethod
    def flatten_scores(scores: dict) -> dict:
        return {k: v for k, v in scores.items() if k != "per_class"}

    @staticmethod
    def primary(scores: dict) -> float:
        return scores["mIoU"]

    @staticmethod
    def describe(scores: dict) -> str:
        return f"mIoU {scores['mIoU']:.3f}, pixel accuracy {scores['aAcc']:.3f}"


TASKS = {"detect": DetectTask, "segment": SegmentTask}


def make_task(cfg: DenseConfig) -> DenseTask:
    return TASKS[cfg.task](cfg)


def load_dense(checkpoint: str | Path, task: str, device: str | torch.device = "cpu",
               overrides: dict | None = None) -> DenseTask:
    """A trained detector/segmenter from a checkpoint of ``mambaout detect|segment train``, its settings and
    class names restored (``overrides`` changes evaluation settings such as ``min_size`` or ``eval_mode``)."""
    from ..engine.config import resolve_config

    ckpt = read_checkpoint(checkpoint)
    if ckpt.get("task") != task:
        what = f"a {ckpt['task']} checkpoint" if ckpt.get("task") else "not a detector/segmenter of this package"
        raise ConfigError(f"{checkpoint} is {what}; 'mambaout {task}' needs one written by 'mambaout {task} train'")
    stored = {k: v for k, v in (ckpt.get("config") or {}).items() if k in CONFIGS[task].__dataclass_fields__}
    stored.update({"checkpoint": None, "pretrained": False, "resume": None, "recipe": None})
    if task == "detect" and "box_head" not in stored:  # trained before the choice existed: torchvision's heads
        stored["box_head"] = "torchvision"
    # None means "as trained": it must not replace the stored value (resolve_config would read it as unset and
    # fall back to the paper default, e.g. an 800-pixel test size for a model trained at 128).
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = resolve_config({**stored, **given}, cls=CONFIGS[task])
    t = TASKS[task](cfg, build_data=False, num_classes=ckpt["num_classes"], class_names=ckpt.get("class_names"))
    t.model.load_state_dict(ckpt["model"])
    t.model.to(device).eval()
    return t
