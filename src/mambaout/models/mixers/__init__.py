"""Token mixers for the Gated CNN block.

A token mixer takes the ``c`` branch of the block (channels-last, ``(B, H, W, C)``, or NCHW for a mixer
registered with ``layout="NCHW"``) and returns a tensor of the same shape. MambaOut's mixer is a depthwise
convolution; the registry lets other mixers (an SSM, attention) take its place in the same block so that only the
mixer differs between two models.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MIXERS: dict[str, Callable[..., nn.Module]] = {}
_LAYOUTS: dict[str, str] = {}


def register_token_mixer(name: str, layout: str = "NHWC"):
    """Decorator for a class or factory: make a mixer constructible by name through :func:`create_token_mixer`.

    ``layout`` is the layout the mixer takes and returns: ``"NHWC"`` (the block's own, ``(B, H, W, C)``) or
    ``"NCHW"``, for modules such as ``nn.Conv2d`` that the block then feeds a channels_last view.
    """
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"token mixer layout must be 'NHWC' or 'NCHW', got {layout!r}")

    def wrap(factory):
        if name in _MIXERS:
            raise ValueError(f"token mixer {name!r} is already registered")
        _MIXERS[name] = factory
        _LAYOUTS[name] = layout
        return factory

    return wrap


def list_token_mixers() -> list[str]:
    return sorted(_MIXERS)


def mixer_layout(name: str) -> str:
    """The layout (``"NHWC"`` or ``"NCHW"``) the registered mixer ``name`` works in."""
    _factory(name)
    return _LAYOUTS[name]


def _factory(name: str):
    try:
        return _MIXERS[name]
    except KeyError:
        raise ValueError(
            f"unknown token mixer {name!r}; available: {', '.join(list_token_mixers())}"
        ) from None


def create_token_mixer(name: str, channels: int, kernel_size: int = 7, device=None, dtype=None, **kwargs):
    return _factory(name)(channels, kernel_size=kernel_size, device=device, dtype=dtype, **kwargs)


@register_token_mixer("conv", layout="NCHW")
def depthwise_conv(channels: int, kernel_size: int = 7, device=None, dtype=None) -> nn.Conv2d:
    """MambaOut's token mixer: a depthwise k×k ``nn.Conv2d`` (parameter names ``weight``, ``bias``, as in every
    released checkpoint). A plain ``nn.Conv2d``, as in timm's model, so that tools which dispatch on module types
    (FLOP counters, quantizers, LoRA) treat it as the convolution it is."""
    return nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                     device=device, dtype=dtype)
