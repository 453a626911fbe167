"""Classify images: ``Predictor`` (used by ``mambaout predict`` and the demo) and robust image loading."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

# Loading lives with the other bad-input handling; these names stay importable from here.
from ..data.safe import ImageLoadError, load_image, to_rgb
from ..data.transforms import create_eval_transform, resolve_data_config
from ..utils.amp import autocast
from .deploy import export_for_runtime


def imagenet_labels() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to the image files inside them."""
    from PIL import Image

    exts = {e.lower() for e in Image.registered_extensions()}
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts))
        else:
            out.append(p)  # a missing or unreadable file is reported by name when loaded
    return out


class Predictor:
    """Top-k classification with a model's own preprocessing, on PyTorch, ONNX Runtime or OpenVINO.

    Build it from a model name with ``pretrained=True``, from any checkpoint (labels stored by ``mambaout train``
    are used), from an exported ``.onnx`` file or OpenVINO ``.xml`` IR (the backend follows the file), or from a
    model object. A torch model with ``backend='onnx'`` or ``'openvino'`` is exported once to a private file;
    ``int8`` quantizes that export, calibrated on ``calib_images`` (preprocessed tensors, see
    :func:`mambaout.infer.deploy.calibration_images`). ``fast``: bfloat16 weights on PyTorch, bfloat16 inference
    on OpenVINO, where the hardware has it.
    """

    def __init__(self, model_name: str | None = None, *, checkpoint: str | Path | None = None,
                 pretrained: bool = False, backend: str = "torch", model: torch.nn.Module | None = None,
                 device: str = "cpu", amp: str = "none", fast: bool = False, int8: bool = False,
                 calib_images: list | None = None, threads: int | None = None):
        from .deploy import BACKENDS, backend_of_file

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16' for prediction, got {amp!r}")
        file_backend = backend_of_file(checkpoint)
        if file_backend and backend not in ("torch", file_backend):
            raise ValueError(f"{checkpoint} is an {file_backend} file; it runs with --backend {file_backend}")
        backend = file_backend or backend
        if int8 and backend == "torch":
            backend = "openvino"  # int8 is a deployment runtime's; OpenVINO is the faster of the two here
        if fast:  # refused before any model is loaded
            from ..models.fast import check_fast_options

            check_fast_options(backend, amp)
        self.backend, self.device, self.amp, self.fast, self.threads = backend, torch.device(device), amp, fast, threads
        self.dtype = torch.float32
        self._tmpdir = None
        if file_backend:
            self._init_runtime(Path(checkpoint))
            return
        if model is None:
            from ..models import model_from_source

            model = model_from_source(model_name, pretrained=pretrained, checkpoint_path=checkpoint)
        if fast and backend == "torch":
            from ..models.fast import to_fast

            self.model, self.dtype = to_fast(model, self.device)
        else:
            self.model = model.eval().to(self.device)
            # the batch is cast to the weights' dtype, so a model passed in bfloat16 runs as it is
            self.dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        self.name = model.pretrained_cfg.get("architecture", model_name or type(model).__name__)
        self.data_config = resolve_data_config(model)
        self.labels = self._labels(model.pretrained_cfg, model.num_classes)
        self._runner = self._torch_runner
        self.transform = create_eval_transform(self.data_config)
        if backend != "torch":  # run this torch model on a runtime: export once to a private file
            self._tmpdir = tempfile.TemporaryDirectory(prefix=f"mambaout-{backend}-")
            path = export_for_runtime(self.model.float().cpu(), backend, Path(self._tmpdir.name), int8=int8,
                                      calib_images=calib_images)
            self._init_runtime(path, keep_labels=True)

    def _init_runtime(self, path: Path, keep_labels: bool = False):
        from .deploy import open_runtime

        runner = open_runtime(path, self.backend, fast=self.fast, threads=self.threads)
        meta = runner.metadata
        if not keep_labels:
            self.name = meta.get("model_name", path.stem)
            self.data_config = {k: meta[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")
                                if k in meta}
            self.data_config.setdefault("crop_mode", "center")
            self.labels = self._labels({"label_names": meta.get("label_names")}, meta.get("num_classes"))
            self.transform = create_eval_transform(self.data_config)
        self._runtime = runner
        self._runner = self._runtime_runner

    @staticmethod
    def _labels(cfg: dict, num_classes: int | None) -> list[str]:
        names = cfg.get("label_names")
        if names:
            return list(names)
        if num_classes == 1000:
            return imagenet_labels()
        return [f"class_{i}" for i in range(num_classes or 0)]

    def _torch_runner(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.amp, self.device):
            return self.model(batch.to(self.device, self.dtype)).float().cpu()

    def _runtime_runner(self, batch: torch.Tensor) -> torch.Tensor:
        return self._runtime(batch)

    def logits(self, images: list) -> torch.Tensor:
        """Raw logits of a list of PIL images."""
        batch = torch.stack([self.transform(to_rgb(img)) for img in images])
        return self._runner(batch)

    def predict(self, images: list, topk: int = 5) -> list[list[dict]]:
        """For each PIL image, the ``topk`` classes as ``{"label", "index", "prob"}``, most likely first."""
        probs = self.logits(images).softmax(dim=-1)
        k = min(topk, probs.shape[-1])
        values, indices = probs.topk(k, dim=-1)
        return [[{"label": self._label(int(i)), "index": int(i), "prob": float(p)} for p, i in zip(vs, ids)]
                for vs, ids in zip(values, indices)]

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else f"class_{index}"

    def predict_paths(self, paths: Iterable[str | Path], batch_size: int = 16, topk: int = 5) -> Iterator[dict]:
        """One result per path, in order: ``{"path", "topk"}`` or ``{"path", "error"}``; a bad file never
        stops the others."""
        pending: list[tuple[str, object]] = []
        for path in paths:
            try:
                pending.append((str(path), load_image(path)))
            except ImageLoadError as e:
                yield from self._flush(pending, topk)
                pending = []
                yield {"path": str(path), "error": str(e)}
                continue
            if len(pending) == batch_size:
                yield from self._flush(pending, topk)
                pending = []
        yield from self._flush(pending, topk)

    def _flush(self, pending, topk):
        if not pending:
            return
        results = self.predict([img for _, img in pending], topk=topk)
        for (path, _), top in zip(pending, results):
            yield {"path": path, "topk": top}

    def timed_predict(self, image, topk: int = 5) -> tuple[list[dict], float]:
        t0 = time.perf_counter()
        top = self.predict([image], topk=topk)[0]
        return top, time.perf_counter() - t0
