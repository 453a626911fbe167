"""Preprocessing resolved from a model's pretrained config (timm's transforms do the work)."""
from __future__ import annotations

from typing import Any

from torch import nn


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


def create_eval_transform(config: dict[str, Any]):
    """Resize (by ``crop_pct``), centre-crop, to tensor, normalise: the evaluation transform of ``config``."""
    from timm.data import create_transform

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return create_transform(**{k: config[k] for k in keys if k in config}, is_training=False)
