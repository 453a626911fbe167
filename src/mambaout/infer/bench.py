"""Throughput, latency and peak memory of models: ``mambaout bench`` and :func:`benchmark`.

Each model is built with random weights (speed does not depend on their values), run ``warmup`` times untimed and
then ``runs`` times timed on one random batch. ``mode='eval'`` times a forward pass under
``torch.inference_mode``; ``mode='train'`` (``--train``) times zero-grad, forward, cross-entropy, backward and an
AdamW step. ``--backend onnx`` exports the model to a temporary ONNX file and times ``InferenceSession.run``;
``--backend openvino`` to a temporary OpenVINO IR, timed as a static-shape compiled model (float32 inference, or
bfloat16 with ``--fast`` where the CPU has it). ``--int8`` quantizes either export first (calibrated on
scikit-image's photographs: speed does not depend on the calibration's quality). ``--checkpoint`` times an
exported ``.onnx`` or ``.xml`` file as it is.
``--fast`` (torch, eval only) times the package's fastest CPU inference path: weights and input in bfloat16 where
the hardware runs bf16 natively (:func:`mambaout.fast.to_fast`; float32, with a warning, elsewhere), run eagerly.

One result per model; ``--format json`` prints each as one JSON object on its own line, with these fields:

``model``               model name
``backend``             ``"torch"``, ``"onnx"`` (onnxruntime) or ``"openvino"``
``device``              ``"cpu"`` or ``"cuda"``
``batch_size``          images per run
``img_size``            square input side in pixels
``amp``                 ``"none"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 only on CUDA)
``dtype``               ``"float32"``, ``"bfloat16"`` or ``"int8"``: the precision actually used (bfloat16 only
                        with ``--fast`` on hardware with native bf16; int8 with ``--int8`` or an int8 file)
``mode``                ``"eval"`` or ``"train"``
``channels_last``       whether model and input were in channels_last memory format
``compile``             whether the model was wrapped in ``torch.compile`` (compilation happens in the warm-up)
``threads``             intra-op CPU threads: ``torch.get_num_threads()`` for torch; for onnx and openvino the
                        ``--threads`` value, or null for the runtime's own default
``images_per_sec``      ``batch_size`` / median latency
``latency_ms_median``   per-run wall time in milliseconds over the timed runs (CUDA is synchronised before the
``latency_ms_min``      clock is read, so a run's time includes all of its GPU work); p90 interpolates linearly
``latency_ms_max``      between the two nearest runs
``latency_ms_p90``
``peak_memory_mb``      peak memory in MiB (2**20 bytes) above what the process held before the model was built,
                        so it counts weights, input, activations and (in train mode) gradients and optimiser
                        state; see ``peak_memory_source``; null when it cannot be measured (onnxruntime on CUDA)
``peak_memory_source``  ``"cuda_max_allocated"``: ``torch.cuda.max_memory_allocated`` minus the allocation at the
                        start (tensors only, not the caching allocator's reserve or the CUDA context);
                        ``"vmhwm"``: Linux's peak resident set size (``VmHWM``), reset through
                        ``/proc/self/clear_refs`` just before the model is built, minus the resident size then;
                        ``"ru_maxrss"``: elsewhere, the growth of ``getrusage(RUSAGE_SELF).ru_maxrss``, a lower
                        bound, since that peak never resets and only grows past the process's earlier peak
``params``              parameter count
``gmacs``               multiply-accumulates per image at ``img_size``, in billions (:func:`mambaout.count_macs`)

``psutil`` is not used: it reports the current resident size only, and sampling that from a thread misses the
short peaks of a forward pass, which the kernel's own high-water mark does not. On CPU, memory freed by an earlier
model in the same process can be reused by the next one, so for exact CPU figures bench one model per process.
"""
from __future__ import annotations

import contextlib
import gc
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..utils.amp import autocast
from ..utils.optional import require
from ..utils.tables import dict_table

FIELDS = (
    "model", "backend", "device", "batch_size", "img_size", "amp", "dtype", "mode", "channels_last", "compile",
    "threads", "images_per_sec", "latency_ms_median", "latency_ms_min", "latency_ms_max", "latency_ms_p90",
    "peak_memory_mb", "peak_memory_source", "params", "gmacs",
)
BACKENDS = ("torch", "onnx", "openvino")
RUNTIMES = ("onnx", "openvino")
AMP_MODES = ("none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
_MIB = 2 ** 20


# ------------------------------------------------------------------------------------------------------ API
def benchmark(
    model_name: str,
    *,
    batch_size: int = 16,
    img_size: int = 224,
    amp: str = "none",
    channels_last: bool = False,
    compile: bool = False,
    backend: str = "torch",
    train: bool = False,
    warmup: int = 3,
    runs: int = 10,
    threads: int | None = None,
    device: str = "auto",
    fast: bool = False,
    int8: bool = False,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Time ``model_name`` and return one result with the fields of the module docstring (in that order).

    ``checkpoint``: an exported ``.onnx``/``.xml`` file to time as it is (its backend follows the file).
    Raises ``ValueError`` for a combination that cannot run (fp16 on CPU, ``train`` with the onnx backend, ...).
    """
    opts = check_options(model_name, batch_size=batch_size, img_size=img_size, amp=amp, channels_last=channels_last,
                          compile=compile, backend=backend, train=train, warmup=warmup, runs=runs, threads=threads,
                          device=device, fast=fast, int8=int8, checkpoint=checkpoint)
    from ..models import create_model
    from ..models.complexity import count_macs, count_params

    meta_model = create_model(model_name, device="meta")
    params = count_params(meta_model)
    gmacs = count_macs(meta_model, (3, img_size, img_size)) / 1e9
    del meta_model

    old_threads = torch.get_num_threads()
    if threads and opts["backend"] == "torch":
        torch.set_num_threads(threads)
    try:
        if opts["backend"] in RUNTIMES:
            times, memory, dtype = _run_runtime(model_name, opts)
            used_threads = threads
        else:
            times, memory, dtype = _run_torch(model_name, opts)
            used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)

    ms = sorted(t * 1e3 for t in times)
    median = _percentile(ms, 50)
    peak_mb, source = memory
    result = {
        "model": model_name, "backend": opts["backend"], "device": opts["device"], "batch_size": batch_size,
        "img_size": img_size, "amp": amp, "dtype": str(dtype).removeprefix("torch."),
        "mode": "train" if train else "eval", "channels_last": bool(channels_last),
        "compile": bool(compile), "threads": used_threads,
        "images_per_sec": round(batch_size / (median / 1e3), 2),
        "latency_ms_median": round(median, 3), "latency_ms_min": round(ms[0], 3), "latency_ms_max": round(ms[-1], 3),
        "latency_ms_p90": round(_percentile(ms, 90), 3),
        "peak_memory_mb": None if peak_mb is None else round(peak_mb, 1), "peak_memory_source": source,
        "params": params, "gmacs": round(gmacs, 3),
    }
    return {k: result[k] for k in FIELDS}


def check_options(model_name: str, **o) -> dict[str, Any]:
    """The options with ``device`` resolved, or a ValueError naming the first one that cannot be used."""
    from ..models.zoo import get_variant

    get_variant(model_name)
    o.setdefault("int8", False)
    o.setdefault("checkpoint", None)
    if o["checkpoint"] is not None:
        from .deploy import backend_of_file

        file_backend = backend_of_file(o["checkpoint"])
        if file_backend is None:
            raise ValueError(f"--checkpoint {o['checkpoint']}: bench times an exported .onnx or .xml file; for "
                             "PyTorch speed the weights do not matter, give --model")
        if o["backend"] not in ("torch", file_backend):
            raise ValueError(f"{o['checkpoint']} is an {file_backend} file; it runs with --backend {file_backend}")
        if not Path(o["checkpoint"]).is_file():
            raise FileNotFoundError(f"exported model not found: {o['checkpoint']}")
        o["backend"] = file_backend
    for key in ("batch_size", "img_size", "runs"):
        if not isinstance(o[key], int) or o[key] < 1:
            raise ValueError(f"{key} must be a positive whole number, got {o[key]!r}")
    if not isinstance(o["warmup"], int) or o["warmup"] < 0:
        raise ValueError(f"warmup must be a whole number >= 0, got {o['warmup']!r}")
    if o["threads"] is not None and (not isinstance(o["threads"], int) or o["threads"] < 1):
        raise ValueError(f"threads must be a positive whole number, got {o['threads']!r}")
    for key, allowed in (("amp", AMP_MODES), ("backend", BACKENDS), ("device", DEVICES)):
        if o[key] not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {o[key]!r}")
    if o["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")

    if o["fast"]:
        from ..models.fast import check_fast_options

        check_fast_options(o["backend"], o["amp"], o["train"])
    if o["int8"] and o["backend"] not in RUNTIMES:
        raise ValueError("--int8 needs --backend openvino or onnx (the quantized model runs on a runtime)")
    if o["int8"] and o["checkpoint"] is not None:
        raise ValueError("--int8 quantizes a fresh export; an exported --checkpoint is timed as it is")
    if o["backend"] in RUNTIMES:
        for key, flag in (("train", "--train"), ("compile", "--compile"), ("channels_last", "--channels-last")):
            if o[key]:
                raise ValueError(f"{flag} applies to --backend torch only")
        if o["amp"] != "none":
            raise ValueError(f"--amp applies to --backend torch only (the {o['backend']} model sets its own "
                             "precision)")
    if o["backend"] == "openvino":
        require("openvino", why="--backend openvino")
        if o["int8"]:
            require("nncf", extra="openvino", why="--int8 with --backend openvino")
        if o["device"] == "cuda":
            raise ValueError("--backend openvino runs on the CPU here; use --device cpu")
        cuda_ok = False
    elif o["backend"] == "onnx":
        ort = require("onnxruntime")
        has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
        if o["device"] == "cuda" and not has_cuda_ep:
            raise ValueError("--backend onnx --device cuda needs onnxruntime with CUDA (pip install onnxruntime-gpu)")
        require("onnx")
        cuda_ok = has_cuda_ep and torch.cuda.is_available()
    else:
        cuda_ok = torch.cuda.is_available()
    o["device"] = "cuda" if o["device"] == "cuda" or (o["device"] == "auto" and cuda_ok) else "cpu"
    if o["amp"] == "fp16" and o["device"] != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp none")
    return o


# ---------------------------------------------------------------------------------------------------- timing
def _run_torch(model_name: str, o: dict) -> tuple[list[float], tuple[float | None, str | None], torch.dtype]:
    from ..models import create_model

    device = torch.device(o["device"])
    fmt = torch.channels_last if o["channels_last"] else torch.contiguous_format

    def cast():
        return autocast(o["amp"], device)

    gen = torch.Generator().manual_seed(0)
    with _PeakMemory(device) as memory:
        model = create_model(model_name)
        dtype = torch.float32
        if o["fast"]:
            from ..models.fast import to_fast

            model, dtype = to_fast(model, device)
        model = model.to(device, memory_format=fmt)
        num_classes = model.num_classes
        x = torch.randn(o["batch_size"], 3, o["img_size"], o["img_size"], generator=gen)
        x = x.to(device, dtype).contiguous(memory_format=fmt)
        if o["train"]:
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            scaler = torch.amp.GradScaler("cuda") if o["amp"] == "fp16" else None
            target = torch.randint(0, max(1, num_classes), (o["batch_size"],), generator=gen).to(device)
        else:
            model.eval()
        run_model = torch.compile(model) if o["compile"] else model

        if o["train"]:
            def step():
                optimizer.zero_grad(set_to_none=True)
                with cast():
                    loss = F.cross_entropy(run_model(x).float(), target)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
        else:
            def step():
                with torch.inference_mode(), cast():
                    run_model(x)

        times = _time_runs(step, o["warmup"], o["runs"], device)
    return times, memory.result, dtype


def _run_runtime(model_name: str, o: dict) -> tuple[list[float], tuple[float | None, str | None], Any]:
    """Time an exported file on ONNX Runtime or OpenVINO: ``--checkpoint``'s, or a fresh export of the model."""
    from .deploy import OpenVINORunner, open_runtime

    device = torch.device(o["device"])
    x = torch.randn(o["batch_size"], 3, o["img_size"], o["img_size"], generator=torch.Generator().manual_seed(0))
    x = x.numpy()
    with tempfile.TemporaryDirectory(prefix="mambaout-bench-") as tmp:
        path = Path(o["checkpoint"]) if o["checkpoint"] else _export_for_bench(model_name, o, Path(tmp))
        gc.collect()  # the exporter's PyTorch model and traces must not count towards the runtime's memory
        # onnxruntime allocates on the GPU outside PyTorch's allocator, so only the CPU figure is meaningful.
        with _PeakMemory(torch.device("cpu"), enabled=device.type == "cpu") as memory:
            if o["backend"] == "onnx":
                from .export import OnnxRunner

                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" \
                    else ["CPUExecutionProvider"]
                runner = OnnxRunner(path, providers=providers, threads=o["threads"])
                session, feed, out = runner.session, {runner.input_name: x}, [runner.output_name]
                step = partial(session.run, out, feed)
                dtype = runner.metadata.get("precision", "float32")
            else:
                runner = open_runtime(path, "openvino", fast=o["fast"], threads=o["threads"])
                assert isinstance(runner, OpenVINORunner)
                request = runner.compiled(o["batch_size"]).create_infer_request()
                step = partial(request.infer, [x])
                dtype = runner.metadata.get("precision") or {"bf16": "bfloat16", "f32": "float32"}[
                    runner.config["INFERENCE_PRECISION_HINT"]]
            times = _time_runs(step, o["warmup"], o["runs"], torch.device("cpu"))
    return times, memory.result, dtype


def _export_for_bench(model_name: str, o: dict, folder: Path) -> Path:
    from ..models import create_model
    from .deploy import export_for_runtime

    model = create_model(model_name).eval()
    images = None
    if o["int8"]:
        from ..data.transforms import resolve_data_config
        from .export import sample_images

        try:
            images = sample_images(resolve_data_config(model, args={"input_size": (3, o["img_size"], o["img_size"])}))
        except ImportError:  # scikit-image is optional: random images calibrate as well for timing
            images = list(torch.randn(4, 3, o["img_size"], o["img_size"], generator=torch.Generator().manual_seed(2)))
    return export_for_runtime(model, o["backend"], folder, int8=o["int8"], calib_images=images, img_size=o["img_size"])


def _time_runs(step: Callable[[], Any], warmup: int, runs: int, device: torch.device) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _percentile(sorted_values: list[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------------------------- memory
class _PeakMemory:
    """Peak memory in MiB of what runs inside the ``with`` block, with its method (see the module docstring)."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device = device
        self.enabled = enabled
        self.result: tuple[float | None, str | None] = (None, None)

    def __enter__(self):
        if not self.enabled:
            return self
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source, self.base = "cuda_max_allocated", torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            if _reset_peak_rss():
                self.source, self.base = "vmhwm", _proc_status_kib("VmRSS") * 1024
            else:
                self.source, self.base = "ru_maxrss", _ru_maxrss_bytes()
        return self

    def __exit__(self, *exc):
        if not self.enabled or exc[0] is not None:
            return False
        if self.source == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.source == "vmhwm":
            peak = _proc_status_kib("VmHWM") * 1024
        else:
            peak = _ru_maxrss_bytes()
        self.result = (max(0, peak - self.base) / _MIB, self.source)
        return False


def _reset_peak_rss() -> bool:
    """Reset Linux's peak resident size (VmHWM) to the current size; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kib("VmHWM") is not None
    except OSError:
        return False


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+)\s*kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _ru_maxrss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


def _malloc_trim() -> None:
    # glibc keeps freed memory of an earlier model mapped; returning it makes the baseline closer to live data.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ----------------------------------------------------------------------------------------------------- table
TABLE_COLUMNS = (
    ("model", "model", str),
    ("backend", "backend", str),
    ("device", "device", str),
    ("mode", "mode", str),
    ("batch", "batch_size", str),
    ("amp", "amp", str),
    ("dtype", "dtype", str),
    ("img/s", "images_per_sec", lambda v: f"{v:.1f}"),
    ("median ms", "latency_ms_median", lambda v: f"{v:.2f}"),
    ("p90 ms", "latency_ms_p90", lambda v: f"{v:.2f}"),
    ("min ms", "latency_ms_min", lambda v: f"{v:.2f}"),
    ("max ms", "latency_ms_max", lambda v: f"{v:.2f}"),
    ("peak MiB", "peak_memory_mb", lambda v: f"{v:.0f}"),
    ("params", "params", lambda v: f"{v / 1e6:.2f}M"),
    ("GMACs", "gmacs", lambda v: f"{v:.3g}"),
)


def format_table(rows: list[dict]) -> list[str]:
    """The lines of the text table of :func:`benchmark` results, with the settings they share under it."""
    lines = dict_table(rows, TABLE_COLUMNS)
    if rows:
        r = rows[0]
        lines.append(f"img {r['img_size']}, channels_last={r['channels_last']}, compile={r['compile']}, "
                     f"threads={r['threads'] if r['threads'] is not None else 'default'}, "
                     f"memory: {r['peak_memory_source'] or 'not measured'}")
    return lines


__all__ = ["AMP_MODES", "BACKENDS", "DEVICES", "FIELDS", "benchmark", "check_options", "format_table"]
