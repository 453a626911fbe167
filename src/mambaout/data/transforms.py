"""Preprocessing resolved from a model's pretrained config (timm's transforms do the work)."""
from __future__ import annotations

import math
from typing import Any

from torch import nn

# How much longer than wide (or the crop's own shape) an image may be before its long side is trimmed.
MAX_ASPECT_RATIO = 16.0


def resolve_data_config(model: nn.Module | None = None, args: dict[str, Any] | None = None,
                        use_test_size: bool = False) -> dict[str, Any]:
    """``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode`` for ``model``.

    ``args`` overrides any of them (e.g. ``{'input_size': (3, 256, 256)}``).
    """
    from timm.data import resolve_data_config as _timm_resolve

    cfg = getattr(model, "pretrained_cfg", None) if model is not None else None
    out = _timm_resolve(args=args or {}, pretrained_cfg=cfg, model=model, use_test_size=use_test_size)
    # Configs read back from checkpoints or JSON carry lists; keep the tuple form timm itself produces.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


class CapAspectRatio:
    """Centre-crop a PIL image's long side to at most ``max_ratio`` times its short side.

    The eval resize scales the *short* side to the crop size, so a 40000 x 1 strip would first become a
    8960000 x 224 image (gigabytes) only for the centre crop to keep its middle. The final crop lies well inside
    the kept middle, so images within the ratio are untouched and longer ones give the same crop up to resampling.
    """

    def __init__(self, max_ratio: float = MAX_ASPECT_RATIO):
        if not max_ratio >= 1:
            raise ValueError(f"max_ratio must be at least 1, got {max_ratio}")
        self.max_ratio = float(max_ratio)

    def __call__(self, img):
        if not hasattr(img, "crop"):  # tensors: their size was settled by whoever made them
            return img
        width, height = img.size
        if width > height * self.max_ratio:
            left, right = self._middle(width, height)
            return img.crop((left, 0, right, height))
        if height > width * self.max_ratio:
            top, bottom = self._middle(height, width)
            return img.crop((0, top, width, bottom))
        return img

    def _middle(self, long: int, short: int) -> tuple[int, int]:
        keep = math.ceil(short * self.max_ratio)
        keep += (long - keep) % 2  # an even margin keeps the centre exactly where the uncut image has it
        start = (long - keep) // 2
        return start, start + keep

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_ratio={self.max_ratio:g})"


def create_eval_transform(config: dict[str, Any]):
    """Resize (by ``crop_pct``), centre-crop, to tensor, normalise: the evaluation transform of ``config``.

    Images far longer than wide are first trimmed to ``MAX_ASPECT_RATIO`` (see ``CapAspectRatio``) when the resize
    keeps the aspect ratio; 'squash' and 'border' crop modes bound the size themselves and are left as timm makes
    them.
    """
    from timm.data import create_transform
    from torchvision import transforms

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    tf = create_transform(**{k: config[k] for k in keys if k in config}, is_training=False)
    if config.get("crop_mode", "center") in ("squash", "border"):
        return tf
    _, crop_h, crop_w = config.get("input_size", (3, 224, 224))
    cap = CapAspectRatio(MAX_ASPECT_RATIO * max(crop_h / crop_w, crop_w / crop_h))
    if isinstance(tf, transforms.Compose):
        tf.transforms.insert(0, cap)
        return tf
    return transforms.Compose([cap, tf])
