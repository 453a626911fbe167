"""Knowledge distillation from a teacher, as DeiT does it (Touvron et al. 2021, section 5).

The teacher runs in eval mode under ``no_grad`` on the student's own batch (after Mixup/CutMix, as DeiT feeds
it), re-normalised to the teacher's mean and std and resized to its input size when those differ. The loss mixes
the student's label loss with a distillation term by ``alpha``:

- ``soft``: the KL divergence between the student's and the teacher's softened distributions at temperature ``T``,
  times ``T**2`` (DeiT's soft distillation);
- ``hard``: cross-entropy against the teacher's top-1 class (DeiT's hard-label distillation).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import ConfigError

TIMM_PREFIX = "timm:"


def load_teacher(spec: str, checkpoint: str | None = None, num_classes: int | None = None) -> nn.Module:
    """The teacher ``spec`` names: a checkpoint file (ours, which records its model), one of our model names
    (``NAME`` or ``NAME.TAG``: its published weights, or ``checkpoint``'s), or ``timm:NAME`` (timm's model: its
    pretrained weights through timm, or ``checkpoint``'s, with a classifier of ``num_classes``)."""
    from ..models import create_model, model_from_source
    from ..models.zoo import is_model_name

    if spec.startswith(TIMM_PREFIX):
        import timm

        name = spec[len(TIMM_PREFIX):]
        sized = {"num_classes": num_classes} if checkpoint and num_classes else {}
        try:
            return timm.create_model(name, pretrained=checkpoint is None, checkpoint_path=checkpoint or "", **sized)
        except (RuntimeError, ValueError, OSError) as e:
            raise ConfigError(f"--teacher {spec}: timm cannot build it ({type(e).__name__}: {e})", "teacher") from None
    if Path(spec).is_file():
        return model_from_source(None, checkpoint_path=spec)
    if is_model_name(spec):
        return create_model(spec, pretrained=checkpoint is None, checkpoint_path=checkpoint)
    raise ConfigError(f"--teacher {spec!r} is neither a checkpoint file, one of our model names, nor timm:NAME",
                      "teacher")


def _preprocessing(model: nn.Module) -> tuple[tuple, tuple, tuple]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return (tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            tuple(cfg.get("input_size", (3, 224, 224)))[1:])


class Distiller:
    """The teacher's side of a distilled run; ``loss`` gives the mixed loss and its parts."""

    def __init__(self, teacher: nn.Module, student_mean, student_std, num_classes: int, kind: str = "soft",
                 temperature: float = 1.0, alpha: float = 0.5, img_size: int | None = None):
        out = getattr(teacher, "num_classes", None)
        if out is not None and out != num_classes:
            raise ConfigError(f"the teacher predicts {out} classes, the student {num_classes}; distil from a teacher "
                              "trained on the same classes", "teacher")
        self.teacher = teacher.eval().requires_grad_(False)
        mean, std, size = _preprocessing(teacher)
        shape = (1, 3, 1, 1)
        # x_teacher = (x_student * std_s + mean_s - mean_t) / std_t, as one scale and shift per channel
        self.scale = torch.tensor([s / t for s, t in zip(student_std, std)]).view(shape)
        self.shift = torch.tensor([(m - n) / t for m, n, t in zip(student_mean, mean, std)]).view(shape)
        self.same_norm = tuple(student_mean) == mean and tuple(student_std) == std
        self.size = None if img_size is None or tuple(size) == (img_size, img_size) else tuple(size)
        self.kind, self.temperature, self.alpha = kind, temperature, alpha
        self.images = 0
        self.seconds = 0.0

    def to(self, device) -> Distiller:
        self.teacher.to(device)
        self.scale, self.shift = self.scale.to(device), self.shift.to(device)
        return self

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        x = images if self.same_norm else images * self.scale + self.shift
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        out = self.teacher(x).float()
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.seconds += time.perf_counter() - t0
        self.images += images.shape[0]
        return out

    def loss(self, student: torch.Tensor, images: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, dict]:
        teacher = self.logits(images)
        if self.kind == "soft":
            t = self.temperature
            term = F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher / t, dim=1),
                            reduction="batchmean", log_target=True) * (t * t)
        else:
            term = F.cross_entropy(student.float(), teacher.argmax(dim=1))
        total = (1 - self.alpha) * base + self.alpha * term
        return total, {"label_loss": base.detach(), "distill_loss": term.detach()}

    def images_per_sec(self) -> float:
        """The teacher's throughput so far (its forward passes only), then starts counting afresh."""
        rate = self.images / self.seconds if self.seconds else 0.0
        self.images, self.seconds = 0, 0.0
        return rate


__all__ = ["Distiller", "TIMM_PREFIX", "load_teacher"]
