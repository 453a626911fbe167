"""Token mixers for the Gated CNN block.

A token mixer takes the ``c`` branch of the block (channels-last, ``(B, H, W, C)``) and returns a tensor of
the same shape. MambaOut's mixer is a depthwise convolution; the registry lets other mixers (an SSM, attention)
take its place in the same block so that only the mixer differs between two models.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_MIXERS: dict[str, Callable[..., nn.Module]] = {}


def register_token_mixer(name: str):
    """Class decorator: make a mixer constructible by name through :func:`create_token_mixer`."""

    def wrap(cls):
        if name in _MIXERS:
            raise ValueError(f"token mixer {name!r} is already registered")
        _MIXERS[name] = cls
        return cls

    return wrap


def list_token_mixers() -> list[str]:
    return sorted(_MIXERS)


def create_token_mixer(name: str, channels: int, kernel_size: int = 7, device=None, dtype=None, **kwargs):
    try:
        cls = _MIXERS[name]
    except KeyError:
        raise ValueError(
            f"unknown token mixer {name!r}; available: {', '.join(list_token_mixers())}"
        ) from None
    return cls(channels, kernel_size=kernel_size, device=device, dtype=dtype, **kwargs)


@register_token_mixer("conv")
class ConvMixer(nn.Conv2d):
    """Depthwise k×k convolution over a channels-last tensor (MambaOut's token mixer).

    Subclassing ``nn.Conv2d`` keeps the parameter names (``weight``, ``bias``) of the released checkpoints.
    """

    causal = False

    def __init__(self, channels: int, kernel_size: int = 7, device=None, dtype=None):
        super().__init__(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
            device=device, dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The branch arrives as a strided slice of the fc1 output. A dense NHWC copy viewed as NCHW is in
        # channels_last layout, which oneDNN's depthwise kernel consumes without a further reorder, and its
        # output permuted back is already dense NHWC.
        x = x.contiguous().permute(0, 3, 1, 2)
        return super().forward(x).permute(0, 2, 3, 1)
