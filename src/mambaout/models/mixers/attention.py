"""Multi-head self-attention, as a token mixer of the Gated CNN block and as the mixer of a plain ViT.

Two mixers are registered: ``attn`` (every token sees every token) and ``causal_attn`` (a token sees only the
tokens before it in raster order). They let one Gated CNN network be built with the depthwise conv, full
attention or causal attention in the same slot, the comparison behind the paper's two characteristics of an
SSM (long sequences, causal mixing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from . import register_token_mixer


def pick_num_heads(channels: int, head_dim: int = 32) -> int:
    """The largest divisor of ``channels`` not above ``channels // head_dim`` (at least 1).

    Channel counts of the mixer branch need not be multiples of 32 (``conv_ratio`` 1.25 gives 120 at
    dim 96, a prime width gives no split at all); rounding the head count down to a divisor keeps every head
    at least ``head_dim`` wide instead of failing.
    """
    if channels < 1 or head_dim < 1:
        raise ValueError(f"channels and head_dim must be positive, got {channels} and {head_dim}")
    target = max(1, channels // head_dim)
    return next(h for h in range(target, 0, -1) if channels % h == 0)


class MultiHeadSelfAttention(nn.Module):
    """qkv projection, scaled dot-product attention per head, output projection over a ``(B, N, C)`` sequence.

    ``causal=True`` masks each token from the tokens after it in the sequence.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, causal: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must be a positive divisor of the width {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                           is_causal=self.causal)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, causal={self.causal}"


@register_token_mixer("attn")
class AttentionMixer(MultiHeadSelfAttention):
    """Global self-attention over the H×W positions of a channels-last ``(B, H, W, C)`` branch, in raster order.

    ``kernel_size`` is accepted because the block passes it to every mixer; attention has no kernel. Heads are
    ``num_heads`` if given, else :func:`pick_num_heads` of ``head_dim``.
    """

    is_causal = False

    def __init__(self, channels: int, kernel_size: int = 7, device=None, dtype=None, head_dim: int = 32,
                 num_heads: int | None = None, qkv_bias: bool = True, attn_drop: float = 0.0):
        heads = pick_num_heads(channels, head_dim) if num_heads is None else num_heads
        super().__init__(channels, heads, qkv_bias=qkv_bias, causal=self.is_causal, attn_drop=attn_drop,
                         device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        return super().forward(x.reshape(b, h * w, c)).view(b, h, w, c)


@register_token_mixer("causal_attn")
class CausalAttentionMixer(AttentionMixer):
    """:class:`AttentionMixer` where the token at raster position t sees positions 0..t only."""

    is_causal = True


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's FlopCounterMode knows the CUDA attention kernels but not the CPU one, so counting real CPU tensors
# misses attention entirely. ``mambaout.count_macs`` is unaffected: on the meta device SDPA decomposes into
# counted bmm calls. Merging this into a FlopCounterMode's custom_mapping covers the CPU kernel too; like the
# decomposition, it counts a causal product at full L² (the kernels compute the masked half as well).
SDPA_CPU_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}

__all__ = ["AttentionMixer", "CausalAttentionMixer", "MultiHeadSelfAttention", "SDPA_CPU_FLOP_FORMULAS",
           "pick_num_heads"]
