"""The ``ssm`` token mixer: the Gated CNN block with it is the Mamba block (the paper's Figure 1).

``TokenMixer(Z) = SSM(act(Conv(Z)))``: the block around the mixer already provides Mamba's input projection, gate
(``act(g) *``) and output projection, so the mixer is the depthwise convolution, the activation and the selective
state-space model (Mamba's S6: input-dependent Δ, B, C from a per-token projection, a learned diagonal ``A`` and a
skip ``D``), run over the ``L = H·W`` tokens in one or more scan orders:

* ``1d`` (default): one causal raster scan, the plain Mamba block. The convolution is a depthwise 1-D conv of
  width ``d_conv`` over the raster sequence, padded on the left only, so no output sees a later token.
* ``bidirectional``: forward and backward raster scans, summed (Vision Mamba).
* ``cross``: row-major and column-major scans, each forwards and backwards, summed (VMamba's SS2D).

The two non-causal orders use a depthwise ``kernel_size``×``kernel_size`` 2-D conv, as VMamba does. Every scan
order has its own projections, ``A`` and ``D``; the conv and activation are shared, and since the projections act
per token they run once on the token map for all orders before the sequences are reordered.

The output is the sum over scan orders with no normalisation (``out_norm=True`` adds VMamba's LayerNorm): the block
gates and projects it next, and the smallest mixer keeps the comparison with the conv mixer about the SSM alone.

Parameters (``K`` scan orders, ``C`` channels, ``N = d_state``, ``R = dt_rank``): ``conv_weight``, ``conv_bias``;
``x_proj_weight (K, R + 2N, C)`` (no bias); ``dt_proj_weight (K, C, R)``; ``dt_proj_bias (K·C,)``;
``A_log (K·C, N)``; ``D (K·C,)``. They are plain parameters rather than ``nn.Linear``/``nn.Conv2d`` modules because
the network's weight init re-initialises those modules and would wipe Mamba's Δ-bias initialisation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register_token_mixer
from .scan import DEFAULT_CHUNK, selective_scan

# FX records the scan as one call instead of tracing its shape checks and chunk loops.
torch.fx.wrap("selective_scan")

SCANS = ("1d", "bidirectional", "cross")
_DIRECTIONS = {"1d": 1, "bidirectional": 2, "cross": 4}
_ACTS = {"silu": F.silu, "gelu": F.gelu}


def _fp32(p: torch.Tensor) -> torch.Tensor:
    # The SSM parameters enter the scan in float32 at least (mamba_ssm's kernel requires it for A, D and the bias).
    return p.to(torch.promote_types(p.dtype, torch.float32))


def _orders(t: torch.Tensor, scan: str, H: int, W: int) -> torch.Tensor:
    """(B, K, X, L) in raster order, one slice per scan order -> each slice in its own order."""
    if scan == "1d":
        return t
    fwd, bwd = t[:, 0], t[:, 1].flip(-1)
    if scan == "bidirectional":
        return torch.stack([fwd, bwd], 1)
    b, _, x, L = t.shape
    cols = t[:, 2:].reshape(b, 2, x, H, W).transpose(-1, -2).reshape(b, 2, x, L)
    return torch.stack([fwd, bwd, cols[:, 0], cols[:, 1].flip(-1)], 1)


def _merge(y: torch.Tensor, scan: str, H: int, W: int) -> torch.Tensor:
    """(B, K, C, L), each slice in its scan order -> (B, C, L) in raster order, summed over scan orders."""
    if scan == "1d":
        return y[:, 0]
    out = y[:, 0] + y[:, 1].flip(-1)
    if scan == "cross":
        cols = y[:, 2] + y[:, 3].flip(-1)
        b, c, L = cols.shape
        out = out + cols.view(b, c, W, H).transpose(-1, -2).reshape(b, c, L)
    return out


@register_token_mixer("ssm")
class SSMMixer(nn.Module):
    """conv → act → selective scan over the H·W tokens; ``(B, H, W, C)`` in and out. See the module docstring.

    scan: ``1d`` | ``bidirectional`` | ``cross``. kernel_size: the 2-D conv of the non-causal orders. d_conv: the
    causal 1-D conv of ``1d``. d_state: SSM state size N. dt_rank: rank of the Δ projection (``"auto"``:
    ceil(C/16)). dt_min, dt_max, dt_init_floor, dt_scale: Mamba's Δ initialisation. chunk_size, use_kernel: passed to
    :func:`~mambaout.models.scan.selective_scan`.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        device=None,
        dtype=None,
        scan: str = "1d",
        d_state: int = 16,
        dt_rank: int | str = "auto",
        d_conv: int = 4,
        act: str = "silu",
        conv_bias: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        out_norm: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        use_kernel: bool = True,
    ):
        super().__init__()
        if scan not in _DIRECTIONS:
            raise ValueError(f"unknown scan {scan!r}; choose one of {', '.join(SCANS)}")
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(_ACTS)}")
        if dt_rank == "auto":
            dt_rank = math.ceil(channels / 16)
        if not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"dt_rank must be a positive int or 'auto', got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        dd = {"device": device, "dtype": dtype}
        K = _DIRECTIONS[scan]
        self.channels, self.scan, self.d_state, self.dt_rank = channels, scan, d_state, dt_rank
        self.causal = scan == "1d"
        self.kernel = d_conv if self.causal else kernel_size
        self.act_name, self.act = act, _ACTS[act]
        self.chunk_size, self.use_kernel = chunk_size, use_kernel
        self.dt_min, self.dt_max, self.dt_init_floor, self.dt_scale = dt_min, dt_max, dt_init_floor, dt_scale
        conv_shape = (channels, 1, d_conv) if self.causal else (channels, 1, kernel_size, kernel_size)
        self.conv_weight = nn.Parameter(torch.empty(conv_shape, **dd))
        self.conv_bias = nn.Parameter(torch.empty(channels, **dd)) if conv_bias else None
        self.x_proj_weight = nn.Parameter(torch.empty(K, dt_rank + 2 * d_state, channels, **dd))
        self.dt_proj_weight = nn.Parameter(torch.empty(K, channels, dt_rank, **dd))
        self.dt_proj_bias = nn.Parameter(torch.empty(K * channels, **dd))
        self.A_log = nn.Parameter(torch.empty(K * channels, d_state, **dd))
        self.D = nn.Parameter(torch.empty(K * channels, **dd))
        # Mamba's convention for parameters that weight decay should skip (A_log is 2-D, so ndim alone misses it).
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_norm = nn.LayerNorm(channels, **dd) if out_norm else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation: PyTorch's default for the conv and x_proj, uniform ±dt_rank^-0.5·dt_scale for
        dt_proj, a Δ bias with softplus(bias) log-uniform in [dt_min, dt_max], A = -(1..N), D = 1."""
        fan_in = self.conv_weight[0].numel()
        nn.init.uniform_(self.conv_weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        bound = 1 / math.sqrt(self.channels)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank ** -0.5 * self.dt_scale
        nn.init.uniform_(self.dt_proj_weight, -std, std)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(self.dt_proj_bias) * (hi - lo) + lo).clamp_(min=self.dt_init_floor)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        n = torch.arange(1, self.d_state + 1, dtype=self.A_log.dtype, device=self.A_log.device)
        self.A_log.copy_(torch.log(n).expand_as(self.A_log))
        self.D.fill_(1.0)
        if self.out_norm is not None:
            self.out_norm.reset_parameters()

    def extra_repr(self) -> str:
        conv = f"d_conv={self.kernel} (causal)" if self.causal else f"kernel_size={self.kernel}"
        return (f"{self.channels}, scan={self.scan!r}, d_state={self.d_state}, dt_rank={self.dt_rank}, {conv}, "
                f"act={self.act_name!r}")

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, C, L) tokens in raster order."""
        b, H, W, c = x.shape
        if self.causal:
            u = x.reshape(b, H * W, c).transpose(1, 2)
            # Left padding only: token t sees tokens t - d_conv + 1 .. t.
            return F.conv1d(F.pad(u, (self.kernel - 1, 0)), self.conv_weight, self.conv_bias, groups=c)
        # A dense NHWC copy viewed as NCHW is channels_last, which oneDNN's depthwise kernel takes without a reorder.
        u = x.contiguous().permute(0, 3, 1, 2)
        u = F.conv2d(u, self.conv_weight, self.conv_bias, padding=self.kernel // 2, groups=c)
        return u.reshape(b, c, H * W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, H, W, c = x.shape
        L, K, N, R = H * W, self.x_proj_weight.shape[0], self.d_state, self.dt_rank
        u = self.act(self._conv(x))  # (b, c, L)
        # Per-token projections for every scan order at once, on the raster-ordered tokens.
        # Broadcast matmuls rather than einsum: their outputs are contiguous in eager and compiled code alike
        # (compiled backward graphs predicted einsum's output strides wrongly and failed on a view).
        proj = torch.matmul(self.x_proj_weight, u.unsqueeze(1))  # (b, K, R + 2N, L)
        dt, Bs, Cs = proj.split((R, N, N), dim=2)
        delta = torch.matmul(self.dt_proj_weight, dt)  # (b, K, c, L)
        us = u.unsqueeze(1).expand(b, K, c, L)
        us, delta, Bs, Cs = (_orders(t, self.scan, H, W) for t in (us, delta, Bs, Cs))
        y = selective_scan(
            us.reshape(b, K * c, L), delta.reshape(b, K * c, L), -torch.exp(_fp32(self.A_log)),
            Bs.contiguous(), Cs.contiguous(), D=_fp32(self.D), delta_bias=_fp32(self.dt_proj_bias),
            delta_softplus=True, chunk_size=self.chunk_size, use_kernel=self.use_kernel,
        )
        y = _merge(y.reshape(b, K, c, L), self.scan, H, W).transpose(1, 2).reshape(b, H, W, c)
        return self.out_norm(y) if self.out_norm is not None else y
