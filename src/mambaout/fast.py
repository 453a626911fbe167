"""``--fast``: the package's fastest inference path, bfloat16 weights run eagerly where the hardware has bf16.

Under ``torch.inference_mode`` on CPU the model takes its fused inference path for float32 and bfloat16 weights
alike; ``--fast`` adds the bfloat16 weights (and input), which roughly halve the memory traffic of every GEMM.
"""
from __future__ import annotations

import warnings

import torch


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
        raise ValueError("--fast applies to --backend torch only (the ONNX model runs in float32)")
    if amp != "none":
        raise ValueError(f"--fast and --amp {amp} are alternatives: --fast already runs bfloat16 weights where "
                         "that is fast; give one of them")
    if train:
        raise ValueError("--fast times inference only; it cannot be combined with --train")


def to_fast(model: torch.nn.Module, device: str | torch.device) -> tuple[torch.nn.Module, torch.dtype]:
    """``model`` in eval mode on ``device`` in :func:`fast_dtype`; returns the model and the dtype used."""
    dtype = fast_dtype(device)
    if dtype != torch.bfloat16:
        where = "this CPU" if torch.device(device).type == "cpu" else f"device {str(device)!r}"
        warnings.warn(f"--fast keeps float32 on {where}: it has no native bfloat16 (AVX-512 BF16/AMX on CPU), "
                      "and emulated bfloat16 matrix products are slower than float32", RuntimeWarning, stacklevel=2)
    return model.eval().to(device, dtype), dtype


__all__ = ["check_fast_options", "fast_dtype", "native_bf16", "to_fast"]
