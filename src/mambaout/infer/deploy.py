"""Deployment runtimes beside PyTorch: OpenVINO IR files, and INT8 post-training quantization for OpenVINO (NNCF)
and ONNX Runtime (static QDQ), calibrated on the user's own images.

An OpenVINO export is a pair ``NAME.xml`` + ``NAME.bin`` with the same metadata as an ONNX export (model name,
preprocessing, labels; see :mod:`mambaout.infer.export`) in the IR's ``rt_info`` under ``mambaout``, so a
predictor needs nothing but the file. :class:`OpenVINORunner` runs one with a static shape per batch size: it
reshapes the IR to each batch it meets and keeps the compiled model, because OpenVINO's CPU plugin is much
slower on a dynamic batch axis (measured 2.2x against 3.9x timm's speed for the same int8 model).

INT8 is the libraries' work: :func:`quantize_openvino` calls ``nncf.quantize`` and :func:`quantize_onnx`
``onnxruntime.quantization.quantize_static``. Both keep the layer types named in :data:`KEEP_FLOAT` in floating
point (see its comment for why).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils.optional import require
from .export import _first_line, _umask

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("f32", "bf16")
RT_INFO_KEY = "mambaout"
CALIB_SIZE = 300  # NNCF's own default subset size
# Layer types left in floating point by default: none. Measured (README, Deployment) on the digits model and on
# femto at batch 16: keeping the depthwise convolution in float (OpenVINO's GroupConvolution, an ONNX Conv with
# group > 1) changed no prediction and no logit by more than 0.02, and cost ONNX Runtime 30% of its int8 speed
# (the Q/DQ pairs around it); OpenVINO ran at the same speed either way. ``--keep-float`` sets them per export.
KEEP_FLOAT: dict[str, tuple[str, ...]] = {"openvino": (), "onnx": ()}
# What ONNX Runtime quantizes: the ops that carry the multiply-adds. Quantizing the elementwise ops and the
# LayerNorms too only adds Q/DQ pairs (measured 10% slower on femto) for no arithmetic saved.
ORT_QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
_CACHE_LIMIT = 4  # compiled static-shape models kept per runner (batch sizes seen)


def backend_of_file(path: str | Path | None) -> str | None:
    """``'onnx'`` for a ``.onnx`` file, ``'openvino'`` for a ``.xml`` IR, None for anything else (a checkpoint)."""
    if path is None:
        return None
    return {".onnx": "onnx", ".xml": "openvino"}.get(Path(path).suffix.lower())


# ------------------------------------------------------------------------------------------------ OpenVINO IR
def to_openvino(model: nn.Module, meta: dict[str, Any], dummy: torch.Tensor):
    """``model`` converted in memory to an ``openvino.Model`` with a free batch axis, named ``image``/``logits``
    input and output, and ``meta`` in its rt_info."""
    ov = require("openvino")
    from .export import INPUT_NAME, OUTPUT_NAME

    c, h, w = meta["input_size"]
    with warnings.catch_warnings():
        # the converter traces with TorchScript and says so on every call; that is its documented path
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        converted = ov.convert_model(model, example_input=dummy, input=[ov.PartialShape([-1, c, h, w])])
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    converted.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    set_openvino_metadata(converted, meta)
    return converted


def set_openvino_metadata(ov_model, meta: dict[str, Any]) -> None:
    for key, value in meta.items():
        ov_model.set_rt_info(json.dumps(value), [RT_INFO_KEY, key])


def save_openvino(ov_model, output: str | Path) -> Path:
    """Write ``ov_model`` as ``OUTPUT`` (``.xml``) and its ``.bin``; both appear whole or not at all: they are
    written into a private folder beside ``output`` and renamed into place, the weights first."""
    ov = require("openvino")
    output = Path(output)
    if output.suffix.lower() != ".xml":
        raise ValueError(f"an OpenVINO IR is named *.xml (its weights go beside it as *.bin), got {output.name!r}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        # weights kept in float32: fp16 compression would change the logits the parity check compares
        ov.save_model(ov_model, str(tmp / output.name), compress_to_fp16=False)
        mask = _umask()
        for suffix in (".bin", ".xml"):
            part = (tmp / output.name).with_suffix(suffix)
            os.chmod(part, 0o666 & ~mask)
            os.replace(part, output.with_suffix(suffix))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def read_openvino_metadata(path: str | Path) -> dict[str, Any]:
    """The mambaout metadata of an OpenVINO IR, JSON values decoded ({} if it has none)."""
    return _metadata_of(_read_ir(path))


@functools.lru_cache(maxsize=1)
def openvino_core():
    """The process's one ``openvino.Core``. A second Core in one process can crash it (seen here as a corrupted
    heap later in the same test session; ultralytics PR #25864 reports the same segfault), so every runner and
    reader shares this one."""
    return require("openvino").Core()


def _read_ir(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path.name}'s weights {path.with_suffix('.bin').name} are missing beside it")
    try:
        return openvino_core().read_model(str(path))
    except RuntimeError as e:
        raise ValueError(f"OpenVINO cannot read {path}: {_first_line(e)}") from None


def _metadata_of(ov_model) -> dict[str, Any]:
    if not ov_model.has_rt_info([RT_INFO_KEY]):
        return {}
    out = {}
    section = ov_model.get_rt_info()[RT_INFO_KEY]
    for key in (section.astype(dict) if hasattr(section, "astype") else section):
        raw = ov_model.get_rt_info([RT_INFO_KEY, key]).astype(str)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


class OpenVINORunner:
    """An OpenVINO IR on the CPU: ``runner(images)`` gives logits as a float32 torch tensor.

    ``precision``: ``'f32'`` (the default: the same numbers as PyTorch's float32, to rounding) or ``'bf16'``
    (OpenVINO's bfloat16 inference, fast where the CPU has AVX-512 BF16 or AMX; an int8 IR's unquantized layers
    run in it too). ``threads``: OpenVINO's inference threads (default: its own choice). ``static``: compile one
    static-shape model per batch size met (default), else one dynamic-batch model.
    """

    def __init__(self, path: str | Path, precision: str = "f32", threads: int | None = None, static: bool = True,
                 hint: str = "LATENCY"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.path = Path(path)
        self.core = openvino_core()
        self.model = _read_ir(self.path)
        self.metadata = _metadata_of(self.model)
        self.input_shape = [d.get_length() if d.is_static else "N" for d in self.model.inputs[0].get_partial_shape()]
        self.config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.static = static
        self._compiled: dict[int | None, Any] = {}

    def compiled(self, batch: int | None):
        """The compiled model for ``batch`` images (None: the dynamic one), compiled on first use."""
        key = batch if self.static else None
        if key not in self._compiled:
            model = self.model
            if key is not None:
                model = self.model.clone()
                model.reshape([key, *self.input_shape[1:]])
            if len(self._compiled) >= _CACHE_LIMIT:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = self.core.compile_model(model, "CPU", self.config)
        return self._compiled[key]

    def __call__(self, images) -> torch.Tensor:
        x = _as_batch(images)
        want = self.input_shape
        if x.ndim != len(want) or any(isinstance(e, int) and e != s for e, s in zip(want[1:], x.shape[1:])):
            shape = " x ".join(str(e) for e in want)
            raise ValueError(f"{self.path.name} expects input of shape {shape}, got {' x '.join(map(str, x.shape))}")
        out = self.compiled(int(x.shape[0])).create_infer_request().infer([x])
        return torch.from_numpy(np.array(next(iter(out.values())), dtype=np.float32))


def _as_batch(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
    else:
        x = np.ascontiguousarray(images, dtype=np.float32)
    return x[None] if x.ndim == 3 else x


# ------------------------------------------------------------------------------------- runtimes, one way in
def open_runtime(path: str | Path, backend: str, fast: bool = False, threads: int | None = None):
    """The runner of an exported file: :class:`~mambaout.infer.export.OnnxRunner` or :class:`OpenVINORunner`.
    ``fast`` (OpenVINO): bfloat16 inference where the CPU runs it natively, float32 elsewhere."""
    if backend == "onnx":
        from .export import OnnxRunner

        return OnnxRunner(path, threads=threads)
    if backend == "openvino":
        from ..models.fast import native_bf16

        return OpenVINORunner(path, precision="bf16" if fast and native_bf16("cpu") else "f32", threads=threads)
    raise ValueError(f"backend {backend!r} runs no exported file; choose onnx or openvino")


def export_for_runtime(model: nn.Module, backend: str, folder: Path, int8: bool = False,
                       calib_images: Sequence[torch.Tensor] | None = None, img_size: int | None = None) -> Path:
    """``model`` exported into ``folder`` for ``backend`` (``'onnx'`` or ``'openvino'``), quantized to INT8 on
    ``calib_images`` if ``int8``; the path of the file to open."""
    from .export import export_model

    path = Path(folder) / ("model.onnx" if backend == "onnx" else "model.xml")
    if not int8:
        return export_model(model, backend, path, img_size=img_size)
    if not calib_images:
        raise ValueError("--int8 needs calibration images: give --calib-dir, a folder of your own images")
    return export_int8(model, backend, path, calib_images, img_size=img_size)


class ExportedClassifier(nn.Module):
    """An exported file's runner behind the module interface the evaluation loop uses (``pretrained_cfg``,
    ``num_classes``, ``forward``): the numbers come from the runtime, not from PyTorch."""

    def __init__(self, runner, fallback_cfg: dict[str, Any] | None = None):
        super().__init__()
        self.runner = runner
        meta = dict(runner.metadata)
        cfg = dict(fallback_cfg or {})
        cfg.update({k: meta[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode",
                                         "label_names", "num_classes") if k in meta})
        cfg.setdefault("architecture", meta.get("model_name", "exported"))
        cfg.setdefault("crop_mode", "center")
        self.pretrained_cfg = cfg
        self.num_classes = int(cfg.get("num_classes") or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


# ---------------------------------------------------------------------------------------------- calibration
def calibration_images(calib_dir: str | Path, data_config: dict[str, Any], size: int = CALIB_SIZE,
                       ) -> tuple[list[torch.Tensor], list[str]]:
    """Up to ``size`` images of ``calib_dir`` (searched recursively, in sorted order, evenly spread when there are
    more) through ``data_config``'s eval transform; returns (tensors, unreadable files skipped with a warning)."""
    from ..data.safe import BadSampleWarning, ImageLoadError, load_image
    from ..data.transforms import create_eval_transform
    from .predict import expand_inputs

    root = Path(calib_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--calib-dir {root}: no such folder")
    paths = expand_inputs([root])
    if not paths:
        raise ValueError(f"--calib-dir {root}: no image files in it")
    if len(paths) > size:  # spread over the folder: sorted class folders would otherwise calibrate on a few classes
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, size).round().astype(int)]
    transform = create_eval_transform(data_config)
    images, skipped = [], []
    for path in paths:
        try:
            images.append(transform(load_image(path)))
        except ImageLoadError as e:
            skipped.append(str(path))
            warnings.warn(f"calibration skips {e}", BadSampleWarning, stacklevel=2)
    if not images:
        raise ValueError(f"--calib-dir {root}: none of its {len(paths)} image file(s) could be read")
    return images, skipped


def _batches(images: Sequence[torch.Tensor], batch: int) -> list[np.ndarray]:
    return [torch.stack(list(images[i:i + batch])).numpy() for i in range(0, len(images), batch)]


# ----------------------------------------------------------------------------------------------------- INT8
def quantize_openvino(ov_model, images: Sequence[torch.Tensor], keep_float: Sequence[str] | None = None):
    """``ov_model`` quantized to INT8 by NNCF's post-training quantization on ``images`` (preprocessed
    ``C x H x W`` tensors); ``keep_float``: OpenVINO op types left in floating point (default :data:`KEEP_FLOAT`).
    The metadata is carried over."""
    # NNCF probes for its PyTorch backend, which imports torch's C++-extension helper, which logs a CUDA warning
    # on every machine without CUDA: noise for an OpenVINO quantization.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    nncf = require("nncf", extra="openvino")
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every layer it skips, hundreds of them
    keep = tuple(KEEP_FLOAT["openvino"] if keep_float is None else keep_float)
    _check_kept(keep, {op.get_type_name() for op in ov_model.get_ops()}, "OpenVINO")
    meta = _metadata_of(ov_model)
    data = nncf.Dataset(_batches(images, 1))
    ignored = nncf.IgnoredScope(types=list(keep), validate=False) if keep else None
    kwargs = {"ignored_scope": ignored} if ignored else {}
    quantized = nncf.quantize(ov_model, data, subset_size=len(images), preset=nncf.QuantizationPreset.PERFORMANCE,
                              **kwargs)
    set_openvino_metadata(quantized, {**meta, "precision": "int8", "int8_float_layers": list(keep),
                                      "calibration_images": len(images)})
    return quantized


def quantize_onnx(source: str | Path, output: str | Path, images: Sequence[torch.Tensor],
                  keep_float: Sequence[str] | None = None) -> Path:
    """The ONNX file ``source`` quantized by ONNX Runtime's static quantization (QDQ, int8 weights per channel and
    int8 activations, min-max calibration on ``images``; the ops of :data:`ORT_QUANTIZED_OPS`) into ``output``.
    ``keep_float``: ``'depthwise Conv'`` and/or ONNX op types left in floating point (default :data:`KEEP_FLOAT`).
    The metadata is carried over."""
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    keep = tuple(KEEP_FLOAT["onnx"] if keep_float is None else keep_float)
    proto = onnx.load(str(source))
    _check_kept(keep, {n.op_type for n in proto.graph.node} | {"depthwise Conv"}, "ONNX")
    excluded = [n.name for n in proto.graph.node if _onnx_kept(n, keep)]
    meta = {p.key: p.value for p in proto.metadata_props}
    name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(_batches(images, 1))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {name: x}

    with tempfile.TemporaryDirectory(prefix="mambaout-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # int8 activations and weights (S8S8), ONNX Runtime's documented default for QDQ on x86: U8S8 was 8%
        # faster here but can saturate on CPUs without VNNI.
        quantize_static(str(prepared), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                        op_types_to_quantize=list(ORT_QUANTIZED_OPS), nodes_to_exclude=excluded)
        out = onnx.load(str(Path(tmp) / "q.onnx"))
        del out.metadata_props[:]
        extra = {"precision": "int8", "int8_float_layers": list(keep), "calibration_images": len(images)}
        for key, value in {**meta, **{k: json.dumps(v) for k, v in extra.items()}}.items():
            out.metadata_props.add(key=key, value=value)
        onnx.save(out, str(Path(tmp) / "final.onnx"))
        _replace_into(Path(tmp) / "final.onnx", Path(output))
    return Path(output)


def export_int8(model: nn.Module, fmt: str, output: str | Path, images: Sequence[torch.Tensor],
                img_size: int | Sequence[int] | None = None, keep_float: Sequence[str] | None = None) -> Path:
    """``model`` exported as an INT8 ``fmt`` file (``'openvino'``: NNCF; ``'onnx'``: ONNX Runtime QDQ) calibrated
    on ``images``, written whole or not at all."""
    from .export import export_metadata, export_model

    if fmt not in ("openvino", "onnx"):
        raise ValueError(f"--int8 works with --format openvino or onnx, not {fmt!r}")
    if fmt == "onnx":
        with tempfile.TemporaryDirectory(prefix="mambaout-int8-") as tmp:
            fp32 = export_model(model, "onnx", Path(tmp) / "fp32.onnx", img_size=img_size)
            return quantize_onnx(fp32, output, images, keep_float)
    require("nncf", extra="openvino", why="--int8 with --format openvino")
    meta = export_metadata(model, img_size)
    dummy = torch.randn(2, *meta["input_size"], generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        converted = to_openvino(model.cpu(), meta, dummy)
    return save_openvino(quantize_openvino(converted, images, keep_float), output)


@torch.no_grad()
def agreement(model: nn.Module, runner, images: Sequence[torch.Tensor], batch: int = 16) -> dict[str, float]:
    """How an exported ``runner`` matches ``model`` on ``images``: top-1 agreement (percent), and the largest
    absolute and relative (to the image's logit range) logit differences."""
    model.eval()
    same = total = 0
    worst_abs = worst_rel = 0.0
    for x in _batches(images, batch):
        ref = model(torch.from_numpy(x)).float()
        got = runner(x).float()
        same += int((ref.argmax(1) == got.argmax(1)).sum())
        total += len(x)
        diff = (got - ref).abs()
        span = (ref.amax(1) - ref.amin(1)).clamp_min(1e-12)
        worst_abs = max(worst_abs, float(diff.max()))
        worst_rel = max(worst_rel, float((diff.amax(1) / span).max()))
    return {"top1_agreement": 100.0 * same / max(total, 1), "max_abs_diff": worst_abs, "max_rel_diff": worst_rel,
            "images": total}


def _check_kept(keep: Sequence[str], present: set[str], runtime: str) -> None:
    unknown = [t for t in keep if t not in present]
    if unknown:
        raise ValueError(f"--keep-float {','.join(unknown)}: no such {runtime} layer type in this model; it has "
                         f"{', '.join(sorted(present))}")


def _onnx_kept(node, keep: Sequence[str]) -> bool:
    if node.op_type in keep:
        return True
    if "depthwise Conv" in keep and node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return group > 1
    return False


def _replace_into(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` whole: copied beside ``dst`` under a temporary name, then renamed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["BACKENDS", "CALIB_SIZE", "KEEP_FLOAT", "ExportedClassifier", "OpenVINORunner", "agreement",
           "backend_of_file", "calibration_images", "export_for_runtime", "export_int8", "open_runtime",
           "quantize_onnx", "quantize_openvino", "read_openvino_metadata", "save_openvino", "set_openvino_metadata",
           "to_openvino"]
