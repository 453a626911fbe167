"""The fast CPU inference path of MambaOut, and ``--fast`` (bfloat16 weights where the hardware has bf16).

**Fused inference.** :class:`~mambaout.models.mambaout.GatedCNNBlock` and ``Downsample`` hand their forward to
this module when, and only when, nobody could observe the difference from the plain ops:

* no autograd, a plain dense CPU tensor in float32 or bfloat16, the module in eval mode;
* not under FX, TorchScript tracing, ``torch.export``, ``torch.compile``, autocast, vmap, a dispatch mode (FLOP
  counters, fake tensors) or a torch-function mode;
* the module's parts of exactly the types they were built with (``nn.Linear``, ``nn.Conv2d``, timm's
  ``LayerNorm``, ...), so a replaced, wrapped, quantized, LoRA-adapted or parametrized layer takes the plain path;
* no forward, pre-forward or backward hook on the module or its children, none registered globally, and no
  ``forward`` patched onto an instance.

Anything else runs the plain forward, which calls every submodule. What the fused block does differently:

* fc1 runs as two GEMMs, the gate with its activation fused in (oneDNN post-op), and fc2 takes its bias and the
  residual in the GEMM;
* whole images are processed in groups whose widest intermediate (the hidden map) stays near ``_GROUP_BYTES``.
  glibc serves every allocation above 32 MiB with a fresh mmap and unmaps it on free, so a full-batch hidden map
  (100 MB for tiny at batch 16) costs a page fault per 4 KiB on every forward, which measured slower than the
  GEMM that fills it; groups this size are recycled from the heap and stay in cache.

The downsampling convolutions run with their weight in channels_last kept beside the module (oneDNN reorders a
contiguous weight on every call when the input is channels_last; at batch 1 that made the last downsample of
tiny 3x slower than the convolution itself).

oneDNN's fused linear and the mode/hook registries are private torch APIs that change between releases, so they
are used only after :func:`capabilities` has probed them: without the fused linear the same grouped path runs on
public ops, and without a way to see modes and hooks the fused path is off.
"""
from __future__ import annotations

import functools
import threading
import warnings
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerScale
from torch import nn

_GROUP_BYTES = 8 << 20
_STATE = {"enabled": True}
_DTYPES = (torch.float32, torch.bfloat16)
_ACT_NAMES = {nn.GELU: "gelu", nn.SiLU: "swish"}  # oneDNN's post-op names


def set_fused_inference(enabled: bool) -> bool:
    """Turn the fused CPU inference path on or off (default on); returns the previous setting.

    The path only runs where it gives the numbers of the plain ops (see the module docstring), so turning it
    off is for measuring it.
    """
    old = _STATE["enabled"]
    _STATE["enabled"] = bool(enabled)
    return old


class Capabilities(NamedTuple):
    """What this torch build offers the fused path: ``observers`` (a function telling whether any mode, vmap or
    global module hook is active; None if that cannot be known) and ``fused_linear`` (oneDNN's linear with
    post-ops works and agrees with ``F.linear``)."""

    observers: object
    fused_linear: bool


def _probe_observers():
    try:
        from torch.nn.modules import module as nn_module
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        hooks = [getattr(nn_module, n) for n in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                 "_global_backward_hooks", "_global_backward_pre_hooks")]
        function_modes = torch._C._len_torch_function_stack
        interpreter = torch._C._functorch.peek_interpreter_stack

        def observed() -> bool:
            return (_get_current_dispatch_mode() is not None or function_modes() > 0
                    or interpreter() is not None or any(hooks))

        observed()
        return observed
    except Exception:  # a torch without these internals: nothing can tell whether a mode is watching
        return None


def _probe_fused_linear() -> bool:
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        linear = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        t, w, b = (torch.randn(s, generator=g) for s in ((5, 8), (6, 8), (6,)))
        res = torch.randn(5, 6, generator=g)
        with torch.no_grad():
            checks = [
                (linear(t, w, b, "gelu", [], "none"), F.gelu(F.linear(t, w, b))),
                (linear(t, w, b, "swish", [], ""), F.silu(F.linear(t, w, b))),
                (linear(t, w, b, "none", [], ""), F.linear(t, w, b)),
                (linear.binary(t, res, w, b, "add"), F.linear(t, w, b) + res),
            ]
        return all(torch.allclose(a, r, rtol=1e-4, atol=1e-5) for a, r in checks)
    except Exception:  # op missing, renamed or with another signature in this torch release
        return False


@functools.cache
def capabilities() -> Capabilities:
    """Probe the private torch APIs the fused path relies on (once per process)."""
    return Capabilities(_probe_observers(), _probe_fused_linear())


def _unobserved_input(x) -> bool:
    """The conditions on the call itself: no tracer, compiler, mode, autocast or autograd can see the ops."""
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:  # dynamo, export, FX proxies, fake tensors
        return False
    if not _STATE["enabled"] or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if not x.is_cpu or x.layout != torch.strided or x.dtype not in _DTYPES or x.dim() != 4:
        return False
    if torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.is_available():
        return False
    observed = capabilities().observers
    return observed is not None and not observed()


def _untouched(m: nn.Module) -> bool:
    """No hook, no patched forward and no parametrization on ``m``."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or "forward" in m.__dict__ or "parametrizations" in m._modules)


def _plain_weight(p, x: torch.Tensor) -> bool:
    return p is None or (type(p) is nn.Parameter and p.dtype == x.dtype and p.is_cpu)


def _plain_norm(norm: nn.Module) -> bool:
    return type(norm) is LayerNorm and not getattr(norm, "_fast_norm", False) and norm.elementwise_affine


def block_ok(block: nn.Module, x) -> bool:
    """Whether ``block`` (a GatedCNNBlock) may run :func:`block_forward` on ``x``."""
    if block.training or not _unobserved_input(x):
        return False
    act, ls, drop = block.act, block.ls, block.drop_path
    if not (type(block.fc1) is nn.Linear and type(block.fc2) is nn.Linear and _plain_norm(block.norm)
            and type(act) in _ACT_NAMES and getattr(act, "approximate", "none") == "none"
            and not getattr(act, "inplace", False)
            and (type(ls) is nn.Identity or (type(ls) is LayerScale and not ls.inplace))
            and (type(drop) is nn.Identity or (type(drop) is DropPath and not drop.training))):
        return False
    params = (block.fc1.weight, block.fc1.bias, block.fc2.weight, block.fc2.bias, block.norm.weight,
              block.norm.bias, getattr(ls, "gamma", None))
    return (all(_plain_weight(p, x) for p in params) and _untouched(block)
            and all(_untouched(m) for m in block.children()))


def downsample_ok(ds: nn.Module, x) -> bool:
    """Whether ``ds`` (a Downsample) may run :func:`downsample_forward` on ``x``."""
    if ds.training or not _unobserved_input(x):
        return False
    conv = ds.conv
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and _plain_norm(ds.norm)
            and _plain_weight(conv.weight, x) and _plain_weight(conv.bias, x)
            and _untouched(ds) and _untouched(conv) and _untouched(ds.norm))


# --- the fused ops, on oneDNN where the probe found it, else on public ops ------------------------------------

def _linear_act(t, w, b, act: str):
    if capabilities().fused_linear:
        return torch.ops.mkldnn._linear_pointwise(t, w, b, act, [], "none" if act == "gelu" else "")
    y = F.linear(t, w, b)
    return F.gelu(y) if act == "gelu" else F.silu(y)


def _linear(t, w, b):
    if capabilities().fused_linear:
        return torch.ops.mkldnn._linear_pointwise(t, w, b, "none", [], "")
    return F.linear(t, w, b)


def _linear_residual(t, residual, w, b):
    """``F.linear(t, w, b) + residual``, the addition done by the GEMM where oneDNN is there to do it."""
    if capabilities().fused_linear:
        return torch.ops.mkldnn._linear_pointwise.binary(t, residual, w, b, "add")
    return F.linear(t, w, b).add_(residual)


def _image_groups(n_images: int, bytes_per_image: int) -> range:
    return range(0, n_images, max(1, _GROUP_BYTES // max(1, bytes_per_image)))


def block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The Gated CNN block's function (see its ``forward``) with fewer passes over memory; the token mixer is
    still called as a module, through ``block.mix``.

    Splitting fc1 three ways (a dense mixer input without the copy) measured slower: the narrow GEMMs lose more
    than the copy costs.
    """
    B, H, W, C = x.shape
    h, n_i, n_c = block.split_indices
    w1, b1 = block.fc1.weight, block.fc1.bias
    w2, b2 = block.fc2.weight, block.fc2.bias
    act = _ACT_NAMES[type(block.act)]
    gamma = block.ls.gamma if type(block.ls) is LayerScale else None
    norm = block.norm
    x = x.contiguous()
    groups = _image_groups(B, H * W * h * x.element_size())
    out = None if len(groups) == 1 else torch.empty_like(x)  # one group: its result is the output
    for s in groups:
        xs = x[s:s + groups.step]
        n = xs.shape[0]
        x2 = xs.view(-1, C)
        t = F.layer_norm(x2, (C,), norm.weight, norm.bias, norm.eps)
        g = _linear_act(t, w1[:h], b1[:h], act)
        ic = _linear(t, w1[h:], b1[h:])
        yc = block.mix(ic[:, n_i:].view(n, H, W, n_c))
        y = torch.empty_like(g)
        if n_i:
            torch.mul(g[:, :n_i], ic[:, :n_i], out=y[:, :n_i])
        torch.mul(g[:, n_i:], yc.reshape(-1, n_c), out=y[:, n_i:])
        if gamma is None:
            r = _linear_residual(y, x2, w2, b2)
        else:
            r = torch.addcmul(x2, _linear(y, w2, b2), gamma)
        if out is None:
            return r.view(B, H, W, C)
        out[s:s + n] = r.view(n, H, W, C)
    return out


_CL_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CL_LOCK = threading.Lock()


def _channels_last_weight(conv: nn.Conv2d) -> torch.Tensor:
    """``conv.weight`` in channels_last, kept per module and renewed when the weight changes (new storage,
    in-place update or dtype)."""
    w = conv.weight
    if w.is_inference():  # built under inference_mode: no version counter to tell an in-place change by
        return w.detach().contiguous(memory_format=torch.channels_last)
    key = (w.data_ptr(), w._version, w.dtype, w.shape)
    cached = _CL_WEIGHTS.get(conv)
    if cached is None or cached[0] != key:
        cached = (key, w.detach().contiguous(memory_format=torch.channels_last))
        with _CL_LOCK:
            _CL_WEIGHTS[conv] = cached
    return cached[1]


def downsample_forward(ds: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Downsample's function, the convolution with its weight in channels_last."""
    if ds.norm_first:
        x = F.layer_norm(x, ds.norm.normalized_shape, ds.norm.weight, ds.norm.bias, ds.norm.eps)
    conv = ds.conv
    y = F.conv2d(x.contiguous().permute(0, 3, 1, 2), _channels_last_weight(conv), conv.bias, conv.stride,
                 conv.padding, conv.dilation, conv.groups).permute(0, 2, 3, 1)
    if ds.norm_first:
        return y
    return F.layer_norm(y, ds.norm.normalized_shape, ds.norm.weight, ds.norm.bias, ds.norm.eps)


# --- --fast: bfloat16 weights ----------------------------------------------------------------------------------

def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix products natively.

    Without native bf16 instructions (on CPU: AVX-512 BF16 or AMX) bf16 GEMMs are emulated by converting to and
    from float32, which makes them slower than plain float32, so bf16 only pays where the hardware has them.
    """
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        if device.type == "cpu":
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # an old build without the check, no CUDA driver, ...: assume not native
        return False
    return False


def fast_dtype(device: str | torch.device) -> torch.dtype:
    """The weight dtype ``--fast`` uses on ``device``: bfloat16 where it is native, float32 elsewhere."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def check_fast_options(backend: str = "torch", amp: str = "none", train: bool = False) -> None:
    """Raise ValueError naming the option ``--fast`` cannot be combined with (shared by bench and predict)."""
    if backend == "onnx":
        raise ValueError("--fast applies to --backend torch and openvino (the ONNX model runs in float32)")
    if amp != "none":
        raise ValueError(f"--fast and --amp {amp} are alternatives: --fast already runs bfloat16 weights where "
                         "that is fast; give one of them")
    if train:
        raise ValueError("--fast times inference only; it cannot be combined with --train")


def to_fast(model: nn.Module, device: str | torch.device) -> tuple[nn.Module, torch.dtype]:
    """``model`` in eval mode on ``device`` in :func:`fast_dtype`; returns the model and the dtype used.

    Under ``torch.inference_mode`` on CPU the model takes the fused path for float32 and bfloat16 weights alike;
    the bfloat16 weights (and input) roughly halve the memory traffic of every GEMM.
    """
    dtype = fast_dtype(device)
    if dtype != torch.bfloat16:
        where = "this CPU" if torch.device(device).type == "cpu" else f"device {str(device)!r}"
        warnings.warn(f"--fast keeps float32 on {where}: it has no native bfloat16 (AVX-512 BF16/AMX on CPU), "
                      "and emulated bfloat16 matrix products are slower than float32", RuntimeWarning, stacklevel=2)
    return model.eval().to(device, dtype), dtype


__all__ = ["Capabilities", "block_forward", "block_ok", "capabilities", "check_fast_options", "downsample_forward",
           "downsample_ok", "fast_dtype", "native_bf16", "set_fused_inference", "to_fast"]
