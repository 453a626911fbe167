"""Mamba's selective scan (the S6 recurrence) in pure PyTorch.

For each sample, channel ``d`` and state index ``n``::

    Δ_t  = softplus(delta_t + delta_bias)              (when delta_softplus)
    h_t  = exp(Δ_t A[d, n]) h_{t-1} + Δ_t B_t[n] u_t    (h_{-1} = 0)
    y_t  = Σ_n C_t[n] h_t[n] + D[d] u_t

Shapes follow Mamba-1: ``u, delta: (batch, d, L)``, ``A: (d, n)``, ``B, C: (batch, n, L)`` shared by all channels,
or ``(batch, groups, n, L)`` where channel block ``k`` (of ``d / groups`` channels) reads group ``k`` (VMamba's
per-direction projections), ``D, delta_bias: (d,)``.

:func:`selective_scan_ref` is the sequential recurrence, the ground truth. :func:`selective_scan` computes the same
thing in chunks of ``T`` tokens, with no Python loop over the tokens:

* Tokens are laid out time-major, ``(T, nc, ...)`` for token ``c·T + t``, so that position ``t`` of *every* chunk
  (and every channel and state) is one contiguous slab. The zero-started states inside all chunks then take ``T``
  slab-wide multiply-adds, ``h[t] += a[t] · h[t-1]``, while the same loop turns the decays ``a = exp(Δ·A)`` into
  running products ``exp(cs_t)`` (``cs``: the cumulative log-decay from the chunk's start).
* Chunks are joined by carrying the state: the states at the chunk boundaries obey the same recurrence over the
  ``nc`` chunks (decay: a chunk's total), solved by recursive doubling in log2(nc) steps; the state entering a chunk
  then adds ``exp(cs_t) · h_in`` to each of its tokens.
* Overflow: every factor ever formed is a product of decays ``exp(Δ·A) <= 1`` (it may underflow to 0, which is the
  right answer), so any Δ is safe. The textbook chunked forms are not both safe and cheap:
  ``exp(cs_t) · Σ exp(-cs_s) x_s`` overflows once a chunk's log-decay passes ~88 in float32 (with T = 32, a mean
  ``Δ·|A|`` of 2.8 per token; a freshly initialised femto already reaches 1.8, ``|A|`` going up to 16, and training
  is free to raise Δ), so it needs a fallback path; the pairwise mask ``exp(cs_t - cs_s)``, ``s <= t``, is safe but
  multiplies the work by ~T because Mamba-1's ``A`` is per (channel, state), unlike Mamba-2's scalar per head.
* Lengths that are not a multiple of ``T`` are padded with tokens of Δ = 0 and u = 0, which change nothing.

Memory and speed: the state tensor ``(batch, d, n, L)`` is ``n`` times the input and dominates the cost. It is
never materialised whole: the scan runs on blocks of about ``_BLOCK_ELEMS`` states (runs of chunks of one sample,
or several whole samples), which stay in a CPU's L3 cache, handing the state from one block to the next. Instead
of autograd's intermediates, backward keeps the inputs and the state entering each chunk (1/T of the states): it
recomputes a block's states chunk by chunk from those, and runs the adjoint recurrence
``g_t = C_t dy_t + exp(Δ_{t+1} A) g_{t+1}`` (the same scan backwards in time). The contractions over the states
(``y = Σ_n C h``) are batched matrix products, which FLOP counters count.

On CUDA with the optional ``mamba_ssm`` package installed, :func:`selective_scan` dispatches to its fused kernel.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["selective_scan", "selective_scan_ref"]

# States per block: the few block tensors alive at once (decays, inputs, states, adjoints) fit a CPU's L3 cache,
# and each op is large enough to amortise Python's per-op cost. The chunk trades T slab steps against log2(L/T)
# doubling steps. Both chosen with benchmarks/bench_ssm.py (--chunk-size, --block-elems) on a 2-core EPYC VM:
# blocks of 1M-2M states were fastest (0.5M and 4M 10-30% slower), chunks of 16-64 within noise of each other.
_BLOCK_ELEMS = 1 << 20
DEFAULT_CHUNK = 16


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision exponentials of long cumulative sums lose everything; Mamba's kernel also scans in float32.
    return torch.promote_types(dtype, torch.float32)


def _prep_delta(delta, delta_bias, delta_softplus, dtype):
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _check_shapes(u, delta, A, B, C, D, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, d, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, d, L = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d, n) = ({d}, n); got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 3 and t.shape == (b, n, L)) or (
            t.dim() == 4 and t.shape[0] == b and t.shape[2:] == (n, L) and t.shape[1] > 0 and d % t.shape[1] == 0)
        if not ok:
            raise ValueError(f"{name} must be (batch, n, L) = ({b}, {n}, {L}) or (batch, groups, n, L) with groups "
                             f"dividing d={d}; got {tuple(t.shape)}")
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"B and C have different group counts: {B.shape[1]} and {C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"{name} must be ({d},); got {tuple(t.shape)}")


def _grouped(B: torch.Tensor, groups: int) -> torch.Tensor:
    return B.unsqueeze(1).expand(-1, groups, -1, -1) if B.dim() == 3 else B


def selective_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """The selective scan as the plain sequential recurrence (a Python loop over the L tokens).

    Slow; the ground truth for :func:`selective_scan`. Computes in float32 at least; returns ``u``'s dtype.
    """
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    ct = _compute_dtype(u.dtype)
    b, d, L = u.shape
    groups = B.shape[1] if B.dim() == 4 else (C.shape[1] if C.dim() == 4 else 1)
    n = A.shape[1]
    delta = _prep_delta(delta, delta_bias, delta_softplus, ct).view(b, groups, d // groups, L)
    uu = u.to(ct).view(b, groups, d // groups, L)
    Ag = A.to(ct).view(groups, d // groups, n)
    Bg = _grouped(B.to(ct), groups)
    Cg = _grouped(C.to(ct), groups)
    h = uu.new_zeros(b, groups, d // groups, n)
    ys = []
    for t in range(L):
        dt = delta[..., t, None]
        h = torch.exp(dt * Ag) * h + (dt * uu[..., t, None]) * Bg[:, :, None, :, t]
        ys.append((h * Cg[:, :, None, :, t]).sum(-1))
    y = torch.stack(ys, -1).reshape(b, d, L)
    if D is not None:
        y = y + D.to(ct)[:, None] * u.to(ct)
    return y.to(u.dtype)


def _doubling_(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """States of ``h_k = a_k h_{k-1} + x_k`` along dim 0 by recursive doubling (log2 steps; both overwritten).

    Used on the short sequence of chunk-boundary states. Only products of decays (<= 1) are formed, so any Δ is
    safe.
    """
    k, n = 1, x.shape[0]
    while k < n:
        x[k:].add_(a[k:] * x[:-k])
        if 2 * k < n:
            a[k:].copy_(a[k:] * a[:-k])
        k *= 2
    return x


def _scan_(a: torch.Tensor, x: torch.Tensor, h_in: torch.Tensor | None):
    """States of ``h = a h_prev + x`` over tokens laid out time-major: ``(T, nc, ...)`` is token ``c·T + t``.

    ``a``: per-token decays exp(Δ·A) in [0, 1]; ``x``: inputs Δ·B·u; ``h_in``: the state before the first token
    (None: zero). Overwrites ``a`` and ``x``; returns (states in ``x``'s storage, the state entering each chunk
    (nc, ...) or None when there is a single chunk and no h_in, the state after the last token). Every op covers
    all chunks, channels and states at once: the Python-level work is T steps plus log2(nc) doubling steps,
    whatever the sequence length.
    """
    T, nc = x.shape[:2]
    carry = nc > 1 or h_in is not None
    xs, as_ = x.unbind(0), a.unbind(0)
    for t in range(1, T):
        # Zero-started states within each chunk: one multiply-add over every chunk per position.
        xs[t].addcmul_(as_[t], xs[t - 1])
        if carry:
            # ``a`` becomes the decay from the chunk's start through t: a running product of numbers <= 1, which
            # may underflow to 0 (correctly) but never overflows. (torch.cumprod/cumsum over dim 0 and a
            # triangular matmul of the log-decays are 2-10x slower than these slab-wise products.)
            as_[t].mul_(as_[t - 1])
    if not carry:
        return x, None, x[-1, -1].clone()
    # States entering each chunk: a recurrence over chunks (decay: the chunk's total) started from h_in.
    first = torch.zeros_like(x[-1, :1]) if h_in is None else h_in.unsqueeze(0)
    ends = _doubling_(torch.cat([torch.ones_like(first), a[-1]]), torch.cat([first, x[-1]]))
    x.addcmul_(a, ends[:-1])
    return x, ends[:-1], ends[-1].clone()


def _scan_from(a: torch.Tensor, x: torch.Tensor, entering: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    """The states of :func:`_scan_` again, into ``h``, given the state entering each chunk: then the chunks are
    independent and one multiply-add per position suffices (no running decays, no carry). Keeps ``a`` and ``x``."""
    hs, xs, as_ = h.unbind(0), x.unbind(0), a.unbind(0)
    if entering is None:
        hs[0].copy_(xs[0])
    else:
        torch.addcmul(xs[0], as_[0], entering, out=hs[0])
    for t in range(1, x.shape[0]):
        torch.addcmul(xs[t], as_[t], hs[t - 1], out=hs[t])
    return h


def _scan_rev_(a: torch.Tensor, x: torch.Tensor, g_in: torch.Tensor | None) -> torch.Tensor:
    """The adjoint of :func:`_scan_`: ``g_t = x_t + a_{t+1} g_{t+1}``, with ``g_in`` (None: zero) the term
    ``a_{t+1} g_{t+1}`` arriving at the last token from beyond the block. Same layout; overwrites ``a[1:]`` and
    ``x``, returns the adjoints in ``x``'s storage. ``a[0]`` is left intact."""
    T, nc = x.shape[:2]
    carry = nc > 1 or g_in is not None
    xs, as_ = x.unbind(0), a.unbind(0)
    for t in range(T - 2, -1, -1):
        xs[t].addcmul_(as_[t + 1], xs[t + 1])
        if carry and t + 2 < T:
            # as_[t + 1] becomes the decay from token t to the chunk's end: Π a over t+1 .. T-1.
            as_[t + 1].mul_(as_[t + 2])
    if not carry:
        return x
    # What enters each chunk from the right, E_c = a_0(c+1) g_0(c+1): a recurrence over chunks run backwards,
    # started from g_in, with decay the total of the chunk to the right.
    into = a[0, 1:] * x[0, 1:]
    total = a[0, 1:] * a[1, 1:] if T > 1 else a[0, 1:].clone()
    last = torch.zeros_like(x[0, :1]) if g_in is None else g_in.unsqueeze(0)
    enter = _doubling_(torch.cat([torch.ones_like(last), total.flip(0)]), torch.cat([last, into.flip(0)])).flip(0)
    x[:-1].addcmul_(a[1:], enter)
    x[-1].add_(enter)
    return x


def _time_major(t: torch.Tensor, T: int) -> torch.Tensor:
    """(b, groups, k, nc·T) -> (T, nc, b, groups, k), contiguous."""
    b, groups, k, Lp = t.shape
    return t.reshape(b, groups, k, Lp // T, T).permute(4, 3, 0, 1, 2).contiguous()


def _from_time_major(t: torch.Tensor) -> torch.Tensor:
    T, nc, b, groups, k = t.shape
    return t.permute(2, 3, 4, 1, 0).reshape(b, groups, k, nc * T)


def _blocks(batch: int, groups: int, nc: int, elems_per_chunk: int) -> list:
    """(samples, group, [chunk slices in order]) covering the problem in blocks of about ``_BLOCK_ELEMS`` state
    elements: several samples with all their chunks when a sample is small, else runs of chunks of one sample."""
    per_chunk = max(1, _BLOCK_ELEMS // elems_per_chunk)
    if per_chunk >= nc:
        per = max(1, per_chunk // nc)
        return [(slice(b0, b0 + per), g, [slice(0, nc)]) for b0 in range(0, batch, per) for g in range(groups)]
    k = -(-nc // per_chunk)
    per_chunk = -(-nc // k)  # even runs
    runs = [slice(c0, c0 + per_chunk) for c0 in range(0, nc, per_chunk)]
    return [(slice(bi, bi + 1), g, runs) for bi in range(batch) for g in range(groups)]


class _Scratch:
    """Block-sized buffers reused from block to block: a fresh multi-megabyte tensor per op costs page faults
    that, on CPU, take as long as the op itself."""

    def __init__(self, count: int, blocks: list, T: int, batch: int, nc: int, per_chunk: int, like: torch.Tensor):
        most = max(T * (min(r.stop, nc) - r.start) * (min(bs.stop, batch) - bs.start) * per_chunk
                   for bs, _, runs in blocks for r in runs)
        self.flat = [like.new_empty(most) for _ in range(count)]

    def __call__(self, i: int, shape) -> torch.Tensor:
        return self.flat[i][: math.prod(shape)].view(shape)


def _full_precision(t: torch.Tensor):
    # Under autocast the batched matmuls would run in half precision; the scan keeps the dtype it was given.
    if t.device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


def _dot_n(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Σ_n v[..., n] s[..., n, d] for block states ``s`` (..., n, d) -> (..., d), as one batched matmul."""
    n, d = s.shape[-2:]
    # reshape, not view: eagerly the same (no copy), and compiled graphs may hand these tensors other strides
    return torch.bmm(v.reshape(-1, 1, n), s.reshape(-1, n, d)).reshape(s.shape[:-2] + (d,))


def _dot_d(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Σ_d v[..., d] s[..., n, d] -> (..., n), as one batched matmul (over the transposed view: no copy)."""
    n, d = s.shape[-2:]
    return torch.bmm(v.reshape(-1, 1, d), s.reshape(-1, n, d).transpose(1, 2)).reshape(s.shape[:-2] + (n,))


class _ChunkedScan(torch.autograd.Function):
    """y = Σ_n C h with h the zero-started recurrence; inputs already in the compute dtype, Δ already final.

    u, delta: (b, groups, dg, Lp); A: (groups, dg, n); B, C: (b, groups, n, Lp); Lp a multiple of the chunk T.
    Block tensors are (T, nc, samples, n, channels): the channels innermost make the contractions over n and over
    the channels batched matrix products (also what FLOP counters count), several times faster than reductions.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, T):
        with _full_precision(u):
            return _ChunkedScan._forward(ctx, u, delta, A, B, C, T)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        with _full_precision(gy):
            return _ChunkedScan._backward(ctx, gy)

    @staticmethod
    def _forward(ctx, u, delta, A, B, C, T):
        b, groups, dg, Lp = u.shape
        n, nc = A.shape[-1], Lp // T
        At = A.transpose(1, 2).contiguous()
        dl, Bt, Ct = _time_major(delta, T), _time_major(B, T), _time_major(C, T)
        du = dl * _time_major(u, T)
        y = torch.empty_like(du)
        blocks = _blocks(b, groups, nc, T * dg * n)
        buf = _Scratch(2, blocks, T, b, nc, n * dg, du)
        # The state entering each chunk (1/T of the states), so that backward recomputes the states chunk by chunk.
        entering = [] if any(ctx.needs_input_grad) else None
        for bs, g, runs in blocks:
            h_in = None
            for cs in runs:
                dlb = dl[:, cs, bs, g]
                shape = dlb.shape[:3] + (n, dg)
                a = torch.mul(dlb[..., None, :], At[g], out=buf(0, shape)).exp_()
                x = torch.mul(du[:, cs, bs, g, None, :], Bt[:, cs, bs, g, :, None], out=buf(1, shape))
                h, h_enter, h_in = _scan_(a, x, h_in)
                if entering is not None:
                    entering.append(None if h_enter is None else h_enter.clone())
                y[:, cs, bs, g] = _dot_n(Ct[:, cs, bs, g], h)
        ctx.save_for_backward(u, delta, A, B, C)
        ctx.T, ctx.entering = T, entering
        return _from_time_major(y)

    @staticmethod
    def _backward(ctx, gy):
        u, delta, A, B, C = ctx.saved_tensors
        T, entering = ctx.T, ctx.entering
        b, groups, dg, Lp = u.shape
        n, nc = A.shape[-1], Lp // T
        At = A.transpose(1, 2).contiguous()
        ut, dl, Bt, Ct, gyt = (_time_major(t, T) for t in (u, delta, B, C, gy))
        du = dl * ut
        g_u, g_delta = torch.empty_like(ut), torch.empty_like(dl)
        g_At, g_B, g_C = torch.zeros_like(At), torch.empty_like(Bt), torch.empty_like(Bt)
        blocks = _blocks(b, groups, nc, T * dg * n)
        buf = _Scratch(5, blocks, T, b, nc, n * dg, du)
        i = len(entering)
        for bs, g, runs in reversed(blocks):
            g_in = None
            for cs in reversed(runs):
                i -= 1
                dlb, dub, gyb, Bb = dl[:, cs, bs, g], du[:, cs, bs, g], gyt[:, cs, bs, g], Bt[:, cs, bs, g]
                shape = dlb.shape[:3] + (n, dg)
                a = torch.mul(dlb[..., None, :], At[g], out=buf(0, shape)).exp_()
                x = torch.mul(dub[..., None, :], Bb[..., None], out=buf(1, shape))
                h = _scan_from(a, x, entering[i], buf(2, shape))
                # The adjoint g_t = C_t dy_t + exp(Δ_{t+1} A) g_{t+1}: the same recurrence backwards in time, with
                # the adjoint arriving from the next block (g_in) handed on to the previous one.
                dh = torch.mul(gyb[..., None, :], Ct[:, cs, bs, g, :, None], out=buf(4, shape))
                adj = _scan_rev_(a, dh, g_in)
                g_in = a[0, 0] * adj[0, 0]
                # d loss / d(Δ_t A) = g_t · exp(Δ_t A) h_{t-1} = g_t · (h_t - x_t)
                dla = torch.sub(h, x, out=x).mul_(adj)
                tmp = buf(3, shape)
                g_At[g] += torch.mul(dla, dlb[..., None, :], out=tmp).sum((0, 1, 2))
                gB = _dot_n(Bb, adj)
                g_delta[:, cs, bs, g] = torch.mul(dla, At[g], out=tmp).sum(-2).addcmul_(gB, ut[:, cs, bs, g])
                g_u[:, cs, bs, g] = gB.mul_(dlb)
                g_B[:, cs, bs, g] = _dot_d(dub, adj)
                g_C[:, cs, bs, g] = _dot_d(gyb, h)
        return (_from_time_major(g_u), _from_time_major(g_delta), g_At.transpose(1, 2), _from_time_major(g_B),
                _from_time_major(g_C), None)


def _chunk_length(L: int, chunk_size: int) -> int:
    # A divisor of L near chunk_size needs no padding (the 56², 28², 14² and 7² maps of a 224² input all have one);
    # otherwise equal chunks of at most chunk_size tokens, padded by less than one token per chunk.
    for T in range(min(chunk_size, L), max(1, chunk_size // 4) - 1, -1):
        if L % T == 0:
            return T
    # int(): under torch.jit.trace sizes are tensors, and a tensor chunk length broke the traced Function call
    return int(-(-L // -(-L // chunk_size)))


def _pad_tokens(t: torch.Tensor, pad: int) -> torch.Tensor:
    # No pad op for pad = 0: compiled backward graphs predicted other strides for its result than eager gives,
    # and failed on a view of it.
    return F.pad(t, (0, pad)) if pad else t


_KERNEL = None


def _mamba_kernel():
    """mamba_ssm's fused CUDA scan, or None; imported on first use so that importing this module stays cheap."""
    global _KERNEL
    if _KERNEL is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except Exception:  # not installed, or installed without its compiled extension
            selective_scan_fn = False
        _KERNEL = selective_scan_fn
    return _KERNEL or None


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, chunk_size=DEFAULT_CHUNK,
                   use_kernel=True):
    """The selective scan of :func:`selective_scan_ref`, chunked (see the module docstring).

    ``chunk_size``: tokens per chunk (any length L works; the last chunk is padded). ``use_kernel``: on CUDA, use
    ``mamba_ssm``'s fused kernel when it is installed. Differentiable in every tensor argument; returns ``u``'s
    dtype, computing in float32 at least.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    if use_kernel and u.is_cuda and _mamba_kernel() is not None:
        return _mamba_kernel()(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)
    ct = _compute_dtype(u.dtype)
    b, d, L = u.shape
    groups = B.shape[1] if B.dim() == 4 else (C.shape[1] if C.dim() == 4 else 1)
    n = A.shape[1]
    T = _chunk_length(L, chunk_size)
    pad = -L % T
    dt = _prep_delta(delta, delta_bias, delta_softplus, ct)
    uc = u.to(ct)
    # Padded tokens have Δ = 0 and u = 0: they neither decay nor feed the state, and are cut off the output.
    y = _ChunkedScan.apply(
        _pad_tokens(uc, pad).reshape(b, groups, d // groups, L + pad),
        _pad_tokens(dt, pad).reshape(b, groups, d // groups, L + pad),
        A.to(ct).reshape(groups, d // groups, n),
        _pad_tokens(_grouped(B.to(ct), groups), pad),
        _pad_tokens(_grouped(C.to(ct), groups), pad),
        T,
    ).reshape(b, d, L + pad)[..., :L]
    if D is not None:
        y = y + D.to(ct)[:, None] * uc
    return y.to(u.dtype)
