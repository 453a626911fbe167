"""The one mixed-precision policy: what ``amp`` means on which device, for training, evaluation and inference.

``auto`` is fp16 on CUDA (the paper's runs used fp16 AMP) and off on CPU; ``bf16`` works on both; ``fp16`` needs
CUDA, where it trains with a gradient scaler.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

CHOICES = ("auto", "none", "bf16", "fp16")


def resolve_amp(amp: str, device: torch.device | str) -> str:
    """``amp`` as it applies on ``device``: ``auto`` made concrete; fp16 off CUDA refused in one line."""
    device = torch.device(device)
    if amp not in CHOICES:
        raise ConfigError(f"setting 'amp' must be one of {', '.join(CHOICES)}, got {amp!r}")
    if amp == "auto":
        return "fp16" if device.type == "cuda" else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp 'fp16' needs a CUDA device (on CPU use --amp bf16 or none)")
    return amp


def autocast(amp: str | bool, device: torch.device | str):
    """The autocast context of ``amp`` on ``device`` (``none``: a null context). ``True`` asks for the device's
    half type (bf16 on CPU, fp16 on CUDA), as an evaluation pass that only knows "mixed precision or not" does."""
    device = torch.device(device)
    if isinstance(amp, bool):
        amp = ("fp16" if device.type == "cuda" else "bf16") if amp else "none"
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
