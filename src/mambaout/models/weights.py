"""Read checkpoints of any published layout safely and load them into a model.

Layouts understood: the official release (``downsample_layers.*``, ``stages.i.j.*``, ``norm.*``,
``head.fc1/norm/fc2``), timm's (this project's own layout), ``{'model': ...}`` / ``{'state_dict': ...}`` wrappers,
DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes, and this project's training checkpoints.
Files are read with ``torch.load(weights_only=True)`` or safetensors, so no code in a file ever runs.
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

CLASSIFIER_KEYS = ("head.fc.weight", "head.fc.bias")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, unsafe, or for another architecture."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file into plain Python data, never running its code.

    safetensors metadata, when present, is returned under ``'__metadata__'`` with JSON values decoded; its
    ``model_name``, ``model_args`` and ``pretrained_cfg`` entries are also returned at the top level, where a
    ``.pt`` training checkpoint keeps them. Any file that cannot be read raises :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"checkpoint {path} has an unknown extension {path.suffix!r}; "
            f"expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}"
        )
    try:
        with warnings.catch_warnings():
            # A legacy (non-zip) pickle makes torch warn about its protocol before refusing or loading it; the
            # outcome is reported below, so the warning would only be a second, confusing stderr line.
            warnings.filterwarnings("ignore", message=r".*pickle protocol", category=UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_unpickling_refusal(path, str(e))) from None
    except Exception as e:  # a damaged archive surfaces as almost any error type from inside torch.load
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {first}") from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a dict of tensors")
    return dict(data)


def _unpickling_refusal(path: Path, message: str) -> str:
    """One line for a file torch's weights-only unpickler stopped on, naming what it met.

    torch prefixes every such failure with a paragraph about its ``weights_only`` default, which tells a user
    of this package nothing; the useful part is the refused global (code could run) or the unknown opcode (a
    damaged file, or a pickle feature plain weights never use).
    """
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"refusing to load {path}: it names the Python object {found.group(1)}, and unpickling it could "
                f"run code; only tensors and plain containers are loaded. Re-save it as a plain state dict or "
                f"safetensors from a trusted environment.")
    if "weights only" in message.lower() or "weights_only" in message:
        opcode = re.search(r"Unsupported operand \d+", message)
        detail = opcode.group(0) if opcode else "not a plain tensor pickle"
        return (f"refusing to load {path}: it is corrupt or not a plain weights file ({detail}); files that "
                f"could run code when unpickled are never loaded")
    first = message.strip().splitlines()[0] if message.strip() else "unreadable pickle"
    return f"checkpoint {path} is corrupt or truncated: {first}"


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        out: dict[str, Any] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
            meta = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError, ValueError, MemoryError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from None
    if meta:
        decoded = {k: _maybe_json(v) for k, v in meta.items()}
        out["__metadata__"] = decoded
        # The entries a training checkpoint keeps beside its tensors, so an exported .safetensors file rebuilds
        # its model (name, architecture arguments, preprocessing, labels) exactly as a .pt checkpoint does.
        for key, kind in _LIFTED_METADATA.items():
            if key not in out and isinstance(decoded.get(key), kind):
                out[key] = decoded[key]
    return out


_LIFTED_METADATA = {"model_name": str, "model_args": dict, "pretrained_cfg": dict}


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def extract_state_dict(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint, whichever wrapper and prefix it uses."""
    for key in ("model", "state_dict", "model_state_dict"):
        inner = data.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            data = inner
            break
    sd = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("checkpoint holds no tensors (expected a state dict or a 'model'/'state_dict' entry)")
    # Wrappers nest in either order (a compiled DDP model saves "_orig_mod.module."): strip until none is left.
    while prefix := next((p for p in ("module.", "_orig_mod.") if all(k.startswith(p) for k in sd)), None):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def convert_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the official release's key layout onto this project's (timm's); a dict already in it is returned as is."""
    if not is_official_layout(sd):
        return dict(sd)
    out = {}
    for k, v in sd.items():
        if k.startswith("downsample_layers.0."):
            k = "stem." + k[len("downsample_layers.0."):]
        elif k.startswith("downsample_layers."):
            k = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", k)
        elif re.match(r"^stages\.\d+\.\d+\.", k):
            k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        elif k.startswith("norm."):
            # The official model normalises after pooling, which is the head's first norm here.
            k = "head." + k
        elif k.startswith("head.fc1."):
            k = "head.pre_logits.fc." + k[len("head.fc1."):]
        elif k.startswith("head.norm."):
            k = "head.pre_logits.norm." + k[len("head.norm."):]
        elif k.startswith("head.fc2."):
            k = "head.fc." + k[len("head.fc2."):]
        out[k] = v
    return out


def is_official_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("downsample_layers.") for k in sd)


def num_classes_in(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Classes of a state dict in this project's layout (0 if it has no classifier, None if unknowable)."""
    w = sd.get("head.fc.weight")
    if w is not None:
        return int(w.shape[0])
    return 0 if "head.norm.weight" in sd else None


def _only_class_count_differs(sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> bool:
    """True when the file's classifier differs from the model's in class count only (a fine-tuning load)."""
    w_file, w_own = sd.get("head.fc.weight"), own.get("head.fc.weight")
    if w_file is None:
        return False
    if w_own is None:  # the model was built without a classifier
        return True
    return w_file.shape[0] != w_own.shape[0] and w_file.shape[1:] == w_own.shape[1:]


def load_state_dict_into(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> bool:
    """Load ``sd`` (any layout) into ``model``; a classifier of another size is skipped with a warning. Returns
    whether it was (the classifier is then freshly initialised).

    Any other difference (missing or unexpected keys, other shapes) means the file is for another
    architecture, and the error names the first differences.
    """
    sd = convert_official(sd)
    own = model.state_dict()
    file_classes = num_classes_in(sd)
    head_differs = _only_class_count_differs(sd, own)
    if head_differs:
        model_classes = getattr(model, "num_classes", "?")
        warnings.warn(
            f"{source}: classifier has {file_classes} classes, model has {model_classes}; "
            f"the classifier is left freshly initialised (fine-tuning), every other weight is loaded",
            stacklevel=3,
        )
        sd = {k: v for k, v in sd.items() if k not in CLASSIFIER_KEYS}
    skip = set(CLASSIFIER_KEYS) if head_differs else set()
    missing = [k for k in own if k not in sd and k not in skip]
    unexpected = [k for k in sd if k not in own]
    shapes = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in shapes[:3]))
        if missing:
            parts.append("missing in file " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append("not in model " + ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else ""))
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise CheckpointError(f"{source} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=not head_differs)
    return head_differs
