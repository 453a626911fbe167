"""Export a model to safetensors, ONNX or TorchScript, check the file against PyTorch, and run ONNX files.

safetensors (the default of ``mambaout export``) holds the weights only, so loading it can never run code; its
metadata (each value a JSON-encoded string) carries the ONNX properties below that describe preprocessing and
labels, plus ``format``, ``pretrained_cfg`` and, when known, ``model_args``, so ``create_model(name,
checkpoint_path=FILE)`` (and ``mambaout predict --checkpoint FILE``, which needs no ``--model``) rebuild the model
with its preprocessing and labels.

ONNX files are written by PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it
handles MambaOut with a dynamic batch axis and needs nothing beyond ``onnx`` and ``onnxruntime``, whereas the
newer ``torch.export``-based exporter also needs ``onnxscript``. The graph has one input ``image`` (float32,
``N x C x H x W``, N dynamic, H and W fixed at the export size) and one output ``logits`` (``N x classes``).

Every ONNX file carries its preprocessing in ``metadata_props`` (each value a JSON-encoded string), so a
predictor needs nothing but the file: ``model_name``, ``input_size``, ``mean``, ``std``, ``interpolation``,
``crop_pct``, ``crop_mode``, ``num_classes``, ``input_name``, ``output_name``, ``layout``,
``mambaout_version`` and, when the model knows them, ``label_names``. :func:`read_onnx_metadata` decodes them.
TorchScript archives carry the same dictionary as the extra file ``mambaout_metadata.json``.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.optional import require
from ..utils.tables import text_table

FORMATS = ("onnx", "torchscript", "safetensors", "openvino")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
TORCHSCRIPT_METADATA_FILE = "mambaout_metadata.json"
# Batches traced and compared: 2 when tracing keeps the trace free of size-1 special cases; 1 and 3 when checking
# that the exported batch axis really is dynamic.
_TRACE_BATCH = 2
_PARITY_BATCHES = (1, 3)


# ------------------------------------------------------------------------------------------------- metadata
def export_metadata(model: nn.Module, img_size: int | Sequence[int] | None = None) -> dict[str, Any]:
    """What a predictor needs to prepare inputs and name outputs, resolved as ``mambaout predict`` would."""
    from .. import __version__
    from ..data.transforms import resolve_data_config

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    overrides = {}
    if img_size is not None:
        hw = _pair(img_size)
        chans = tuple(cfg.get("input_size") or (3,))[0]
        overrides["input_size"] = (chans, *hw)
    data = resolve_data_config(model, args=overrides)
    meta: dict[str, Any] = {
        "model_name": cfg.get("architecture") or type(model).__name__,
        "input_size": [int(v) for v in data["input_size"]],
        "mean": [float(v) for v in data["mean"]],
        "std": [float(v) for v in data["std"]],
        "interpolation": data["interpolation"],
        "crop_pct": float(data["crop_pct"]),
        "crop_mode": data.get("crop_mode", "center"),
        "num_classes": int(getattr(model, "num_classes", cfg.get("num_classes", 0)) or 0),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "layout": "NCHW",
        "mambaout_version": __version__,
    }
    labels = cfg.get("label_names")
    if labels:
        meta["label_names"] = [str(n) for n in labels]
    return meta


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        hw = (size, size)
    else:
        hw = tuple(int(v) for v in size)
        if len(hw) == 3:  # a (C, H, W) input size
            hw = hw[1:]
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"img_size must be a positive int or (height, width), got {size!r}")
    return hw


def _decode(props: dict[str, str]) -> dict[str, Any]:
    out = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v  # a property written by another tool, not JSON
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, JSON values decoded (``input_size``, ``mean``, ``label_names``...)."""
    onnx = require("onnx")
    path = _existing(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for a file that is not ONNX
        raise ValueError(f"{path} is not a readable ONNX file: {_first_line(e)}") from None
    return _decode({p.key: p.value for p in proto.metadata_props})


def read_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata stored by :func:`export_model` in a TorchScript archive ({} if the archive has none)."""
    path = _existing(path)
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    with _quiet_deprecations():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_METADATA_FILE]) if extra[TORCHSCRIPT_METADATA_FILE] else {}


# --------------------------------------------------------------------------------------------------- export
def export_model(model: nn.Module, fmt: str, output: str | Path, img_size: int | Sequence[int] | None = None,
                 opset: int | None = None, model_args: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors (``fmt='safetensors'``), ONNX (``'onnx'``) or TorchScript (``'torchscript'``)
    to ``output``; return its path.

    The input size is the model's ``pretrained_cfg['input_size']`` unless ``img_size`` (an int or (H, W)) is
    given; the batch size stays free in every format. ``opset`` defaults to the exporter's own. ``model_args``
    (safetensors only): architecture keywords the model was built with beyond its variant's, recorded so
    ``create_model`` rebuilds the same network. The file appears whole or not at all: it is written next to
    ``output`` under a temporary name and then renamed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    output = Path(output)
    if fmt == "safetensors" and output.suffix != ".safetensors":
        # read_checkpoint picks its reader by extension: under any other name the file could not be loaded back.
        raise ValueError(f"a safetensors file must be named *.safetensors, got {output.name!r}")
    if output.is_dir():
        raise ValueError(f"output {output} is a folder; give the path of the file to write")
    if fmt == "onnx":
        require("onnx")
    if fmt == "openvino":
        require("openvino", why="--format openvino")
    param = next(iter(model.parameters()), None)
    if param is not None and param.dtype != torch.float32:
        raise ValueError(f"export needs a float32 model, this one is {param.dtype}; call model.float() first")
    device = param.device if param is not None else torch.device("cpu")
    meta = export_metadata(model, img_size)
    dummy = torch.randn(_TRACE_BATCH, *meta["input_size"], generator=torch.Generator().manual_seed(0)).to(device)
    if fmt == "openvino":
        return _export_openvino(model, dummy, output, meta)

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _quiet_deprecations():
            if fmt == "safetensors":
                _export_safetensors(model, tmp, meta, model_args)
            elif fmt == "onnx":
                _export_onnx(model, dummy, tmp, meta, opset)
            else:
                # parity_check compares the saved file against the model anyway; the tracer's own re-run check
                # would only double the export time.
                traced = torch.jit.trace(model, dummy, check_trace=False)
                torch.jit.save(traced, tmp, _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); give it the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, output)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def safetensors_metadata(model: nn.Module, meta: dict[str, Any],
                         model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of a safetensors export: :func:`export_metadata` plus what ``create_model`` reads back.

    ``pretrained_cfg`` is the model's own with the exported preprocessing (input size, mean, std, crop, labels)
    written over it, so a model rebuilt from the file prepares images exactly as the export describes.
    """
    cfg = {k: v for k, v in dict(getattr(model, "pretrained_cfg", None) or {}).items() if _is_json(v)}
    cfg.update({k: meta[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode",
                                     "num_classes", "label_names") if k in meta})
    cfg["architecture"] = meta["model_name"]
    graph_only = ("input_name", "output_name", "layout")  # names inside an ONNX graph; a state dict has none
    out = {**{k: v for k, v in meta.items() if k not in graph_only}, "format": "safetensors", "pretrained_cfg": cfg}
    args = {k: v for k, v in (model_args or {}).items() if _is_json(v)}  # metadata values are JSON
    if args:
        out["model_args"] = args
    return out


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _export_safetensors(model: nn.Module, path: str, meta: dict, model_args: dict | None) -> None:
    from safetensors.torch import save_file

    # Cloned: safetensors refuses tensors that share storage (tied or viewed weights); a copy of each is cheap
    # next to an export and loads back identically.
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    full = safetensors_metadata(model, meta, model_args)
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in full.items()})


def read_safetensors_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported safetensors file, JSON values decoded ({} if it has none)."""
    from ..models.weights import read_checkpoint

    path = _existing(path)
    return dict(read_checkpoint(path).get("__metadata__") or {})


def _export_onnx(model: nn.Module, dummy: torch.Tensor, path: str, meta: dict, opset: int | None) -> None:
    import onnx

    kwargs = {} if opset is None else {"opset_version": int(opset)}
    torch.onnx.export(
        model, (dummy,), path, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **kwargs,
    )
    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(proto, path)


def _export_openvino(model: nn.Module, dummy: torch.Tensor, output: Path, meta: dict) -> Path:
    from .deploy import save_openvino, to_openvino

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            converted = to_openvino(model, meta, dummy)
    finally:
        model.train(was_training)
    return save_openvino(converted, output)


@contextlib.contextmanager
def _quiet_deprecations():
    # The TorchScript tracer and the TorchScript-based ONNX exporter announce their deprecation on every call;
    # they are the paths chosen on purpose here (see the module docstring), so the notices are only noise.
    with warnings.catch_warnings():
        for pattern in (r".*legacy TorchScript-based ONNX export", r"The feature will be removed",
                        r"`torch\.jit\.\w+` is deprecated"):
            warnings.filterwarnings("ignore", message=pattern, category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
        yield


# --------------------------------------------------------------------------------------------------- running
class OnnxRunner:
    """An ONNX classifier on onnxruntime: ``runner(images)`` gives logits as a float32 torch tensor.

    ``images``: float32 ``N x C x H x W`` (a single ``C x H x W`` image is given a batch axis), a torch tensor
    or numpy array, already preprocessed as ``runner.metadata`` describes. ``providers`` defaults to the CPU;
    ``threads`` sets onnxruntime's intra-op thread count (default: its own choice).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        ort = require("onnxruntime")
        self.path = _existing(path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        # onnxruntime's worker threads otherwise busy-wait after each run, taking the cores from whatever runs
        # next in the process (PyTorch, the demo's server): measured 3x slower torch calls right after a run.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime's own exception types are not importable by a stable name
            raise ValueError(f"onnxruntime cannot load {self.path}: {_first_line(e)}") from None
        self.metadata = _decode(dict(self.session.get_modelmeta().custom_metadata_map))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, images) -> torch.Tensor:
        import numpy as np

        if isinstance(images, torch.Tensor):
            x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        else:
            x = np.ascontiguousarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        expected = self.input_shape
        if x.ndim != len(expected) or any(isinstance(e, int) and e != s for e, s in zip(expected, x.shape)):
            want = " x ".join(str(e) if isinstance(e, int) else "N" for e in expected)
            raise ValueError(f"{self.path.name} expects input of shape {want}, got {' x '.join(map(str, x.shape))}")
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: x})[0])


def load_exported(path: str | Path, fmt: str, device: torch.device | str = "cpu"):
    """A callable ``images -> logits`` for an exported file: an :class:`OnnxRunner`, an OpenVINO runner (float32
    inference), a loaded TorchScript module, or the model rebuilt from a safetensors file by ``create_model``."""
    if fmt == "onnx":
        return OnnxRunner(path)
    if fmt == "openvino":
        from .deploy import OpenVINORunner

        return OpenVINORunner(path)
    if fmt == "safetensors":
        from ..models import create_model

        path = _existing(path)
        name = read_safetensors_metadata(path).get("model_name")
        if not isinstance(name, str):
            raise ValueError(f"{path} does not record its model (no 'model_name' metadata)")
        return create_model(name, checkpoint_path=path).to(device).eval()
    if fmt == "torchscript":
        path = _existing(path)
        with _quiet_deprecations():
            return torch.jit.load(str(path), map_location=device).eval()
    raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")


@torch.no_grad()
def parity_check(model: nn.Module, exported_path: str | Path, fmt: str,
                 images: list[torch.Tensor] | None = None) -> dict[str, float | None]:
    """Max absolute difference of the logits of ``exported_path`` and of ``model``.

    ``random_b1`` / ``random_b3``: on seeded random inputs of batch 1 and 3 (which also proves the batch axis is
    dynamic); ``real``: on ``images`` (preprocessed ``C x H x W`` tensors, stacked into one batch), None if not
    given.
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    exported = load_exported(exported_path, fmt, device)
    meta = (exported.metadata if fmt in ("onnx", "openvino") else read_safetensors_metadata(exported_path)
            if fmt == "safetensors" else read_torchscript_metadata(exported_path))
    size = meta.get("input_size") or export_metadata(model)["input_size"]
    gen = torch.Generator().manual_seed(1234)
    batches = {f"random_b{b}": torch.randn(b, *size, generator=gen) for b in _PARITY_BATCHES}
    if images:
        batches["real"] = torch.stack([t.float() for t in images])
    was_training = model.training
    model.eval()
    result: dict[str, float | None] = {}
    try:
        for key, x in batches.items():
            with _quiet_deprecations():
                got = exported(x if fmt in ("onnx", "openvino") else x.to(device))
            ref = model(x.to(device))
            result[key] = float((got.float().cpu() - ref.float().cpu()).abs().max())
    finally:
        model.train(was_training)
    result.setdefault("real", None)
    return result


# ------------------------------------------------------------------------------------- checking an export
def sample_images(data_config: dict[str, Any]) -> list[torch.Tensor]:
    """scikit-image's astronaut and coffee photographs, prepared with ``data_config``'s eval transform."""
    from PIL import Image
    from skimage import data as skdata

    from ..data.transforms import create_eval_transform

    transform = create_eval_transform(data_config)
    return [transform(Image.fromarray(skdata.astronaut()).convert("RGB")),
            transform(Image.fromarray(skdata.coffee()).convert("RGB"))]


def parity_report(diffs: dict[str, float | None], fmt: str, num_images: int | None,
                  int8: bool = False) -> list[str]:
    """The lines that report :func:`parity_check`'s result (``num_images``: real images compared, None if the
    sample images were not available), with a warning line when the file differs from PyTorch noticeably.

    ``int8``: a quantized file differs by design, by about one quantization step per layer, so its differences
    are reported without the float tolerance (1e-3) and judged by top-1 agreement instead."""
    real = f"real images ({num_images})" if num_images else "real images (scikit-image not installed)"
    rows = [("random, batch 1", diffs["random_b1"]), ("random, batch 3", diffs["random_b3"]), (real, diffs["real"])]
    lines = [f"parity with PyTorch (max |logit difference|, {fmt}{' int8' if int8 else ''})"]
    lines += text_table([[label, "-" if v is None else f"{v:.2e}"] for label, v in rows], indent="  ", sep=" ",
                        min_widths=(40,))
    worst = max(v for v in diffs.values() if v is not None)
    if worst > 1e-3 and not int8:
        lines.append(f"warning: the exported model differs from PyTorch by up to {worst:.2e}")
    return lines


def resolve_format(fmt: str | None, output: str | Path) -> str:
    """The format asked for, else the one the output's extension names (``.onnx``, ``.xml``), else safetensors."""
    if fmt:
        return fmt
    return {".onnx": "onnx", ".xml": "openvino"}.get(Path(output).suffix.lower(), "safetensors")


# ---------------------------------------------------------------------------------------------------- helpers
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = [
    "FORMATS", "OnnxRunner", "export_metadata", "export_model", "load_exported",
    "parity_check", "parity_report", "read_onnx_metadata", "read_safetensors_metadata", "read_torchscript_metadata",
    "resolve_format", "safetensors_metadata", "sample_images",
]
