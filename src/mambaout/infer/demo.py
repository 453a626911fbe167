"""The web demo: a Gradio app over ``Predictor``. Nothing here runs at import time; ``launch`` starts it.

Visitors are untrusted: the server binds to 127.0.0.1 unless told otherwise, caps upload size, answers a file
that is not an image with a message instead of a server-side traceback, and loads checkpoints only through
``read_checkpoint`` (no pickled code ever runs).
"""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from ..utils.optional import require
from .predict import Predictor

MAX_UPLOAD = "20mb"  # far above any photo worth classifying; stops a visitor filling the disk or memory


def require_gradio():
    """The gradio module, or an ImportError that says how to install it."""
    return require("gradio", "demo", why="the demo")


def example_images(folder: str | Path | None = None) -> list[str]:
    """scikit-image's bundled photographs written as PNG files (Gradio serves examples from files).

    By default they go to one folder in the cache, reused by every launch, rather than a new temporary folder
    each time that nothing would remove.
    """
    from PIL import Image
    from skimage import data

    if folder is None:
        from ..models.hub import cache_dir

        folder = cache_dir() / "demo-examples"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only cache: a private folder still works
            folder = Path(tempfile.mkdtemp(prefix="mambaout-examples-"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        path = folder / f"{name}.png"
        if not path.is_file():
            Image.fromarray(getattr(data, name)()).save(path)
        paths.append(str(path))
    return paths


class PredictorPool:
    """Predictors built on first use and kept; a lock makes concurrent first requests build one, not many."""

    def __init__(self, choices: dict[str, dict]):
        if not choices:
            raise ValueError("the demo needs at least one model (--model NAME or --checkpoint FILE)")
        self.choices = choices
        self._cache: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    def get(self, choice: str) -> Predictor:
        if choice not in self.choices:
            raise ValueError(f"unknown model choice {choice!r}")
        with self._lock:
            if choice not in self._cache:
                self._cache[choice] = Predictor(**self.choices[choice])
            return self._cache[choice]


def choices_from_args(models: list[str] | None, checkpoints: list[str] | None, backend: str = "torch") -> dict:
    """Menu entries: each checkpoint (named by file and model) and each model name with its published weights."""
    from ..models import read_checkpoint

    out: dict[str, dict] = {}
    for ckpt in checkpoints or []:
        path = Path(ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        arch = read_checkpoint(path).get("model_name") if path.suffix != ".onnx" else "onnx"
        if arch is not None and not isinstance(arch, str):
            raise ValueError(f"{path} records a model name that is not text: {arch!r}")
        name = (models or [None])[0] if arch is None else arch
        if name is None:
            raise ValueError(f"{path} does not record its model; pass --model NAME with it")
        out[f"{path.name} ({name})"] = {"model_name": None if arch else name, "checkpoint": str(path),
                                        "backend": backend}
    if not checkpoints:
        for name in models or []:
            out[f"{name} (ImageNet weights)"] = {"model_name": name, "pretrained": True, "backend": backend}
    return out


def _image_input(gr):
    """``gr.Image`` whose upload check fails with a message for the visitor, not Gradio's internal error.

    Gradio opens every upload with Pillow before the handler runs; a text file or random bytes would otherwise
    surface as a long "could not preprocess component" error naming server paths, with a traceback in the log.
    The instance's ``preprocess`` is wrapped rather than subclassed: Gradio writes a ``.pyi`` stub beside the
    source of every ``gr.Image`` subclass, which would land inside the installed package.
    """
    from PIL import Image

    image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"])
    opened = image.preprocess

    def preprocess(payload):
        try:
            return opened(payload)
        except gr.Error:
            raise
        except Exception as e:
            reason = ("too many pixels" if isinstance(e, Image.DecompressionBombError)
                      else "not an image file Pillow can read")
            raise gr.Error(f"This upload is not a usable image ({reason}).") from None

    image.preprocess = preprocess
    return image


def heatmap(predictor: Predictor, image, method: str = "gradcam"):
    """The CAM overlay of ``image``'s top class, or None where there is no PyTorch model to take gradients of."""
    if predictor.backend != "torch":
        return None
    from .cam import explain

    return explain(predictor, [image], method=method, topk=1)[0]["overlay"]


def build_demo(pool: PredictorPool, examples: list[str] | None = None, topk: int = 5, cam: bool = False):
    """The Blocks app. ``cam``: also show a Grad-CAM heatmap of the top class beside the labels."""
    gr = require_gradio()

    names = list(pool.choices)

    def classify(image, choice):
        if image is None:
            raise gr.Error("Upload or paste an image first.")
        try:
            predictor = pool.get(choice or names[0])
            top, seconds = predictor.timed_predict(image, topk=topk)
            overlay = heatmap(predictor, image) if cam else None
        except Exception as e:  # the visitor sees the reason; the server keeps serving
            raise gr.Error(f"Could not classify this image: {e}") from None
        confidences = {f"{t['label']}": t["prob"] for t in top}
        timing = f"{predictor.name} · {seconds * 1000:.0f} ms on {predictor.backend}"
        if cam and overlay is None:
            timing += " · no heatmap for an ONNX model"
        return (confidences, timing, overlay) if cam else (confidences, timing)

    def classify_default(image):
        return classify(image, names[0])[0]

    with gr.Blocks(title="MambaOut image classification") as demo:
        gr.Markdown("# MambaOut image classification\nUpload or paste an image and press **Classify**.")
        with gr.Row():
            with gr.Column():
                image = _image_input(gr)
                model = gr.Dropdown(names, value=names[0], label="Model")
                button = gr.Button("Classify", variant="primary")
            with gr.Column():
                label = gr.Label(num_top_classes=topk, label="Top-5", elem_id="prediction")
                timing = gr.Markdown(elem_id="timing")
                outputs = [label, timing]
                if cam:
                    outputs.append(gr.Image(type="pil", label="Grad-CAM of the top class", elem_id="heatmap",
                                            interactive=False))
        if examples:
            gr.Examples(examples=[[p] for p in examples], inputs=[image])
        button.click(classify, [image, model], outputs, api_name="classify")
        # The documented API: image in, label with confidences out (first model of the menu).
        hidden = gr.Button(visible=False)
        hidden.click(classify_default, [image], [label], api_name="predict")
    return demo


def _check_address(host: str, port: int) -> None:
    """Refuse a port out of range or already taken now, in one line, rather than after loading every model."""
    import socket

    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind(address)
    except OSError as e:
        reason = e.strerror or str(e)
        raise ValueError(f"cannot listen on {host}:{port} ({reason}); choose another --port or --host") from None


def _user_upload_dir() -> str:
    """Gradio keeps uploads in one ``/tmp/gradio`` for every user of a machine, so a second user's uploads fail
    with a server error (the folder is the first user's). One folder per user avoids that."""
    import getpass
    import os

    try:
        who = str(os.getuid()) if hasattr(os, "getuid") else getpass.getuser()
    except Exception:  # no user name to be had (some containers): the shared default
        who = "shared"
    return str(Path(tempfile.gettempdir()) / f"gradio-{who}")


def launch(models: list[str] | None, checkpoints: list[str] | None, host: str = "127.0.0.1", port: int = 7860,
           backend: str = "torch", concurrency: int = 2, queue_size: int = 64, block: bool = True,
           max_file_size: str | int | None = MAX_UPLOAD, cam: bool = False):
    import os

    # Read by gradio when it is imported; GRADIO_TEMP_DIR set by the user wins.
    os.environ.setdefault("GRADIO_TEMP_DIR", _user_upload_dir())
    require_gradio()  # before loading any model: a missing extra should not cost a model load to discover
    if cam:
        require("pytorch_grad_cam", "cam", why="the demo's heatmap")
    _check_address(host, port)
    pool = PredictorPool(choices_from_args(models, checkpoints, backend))
    pool.get(next(iter(pool.choices)))  # fail now, not at the first visitor, if the default model is broken
    try:
        examples = example_images()
    except ImportError:  # scikit-image is optional: the demo works without example photos
        examples = None
    demo = build_demo(pool, examples, cam=cam)
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True,
                footer_links=["api"], max_file_size=max_file_size)
    return demo
