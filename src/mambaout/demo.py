"""The web demo: a Gradio app over ``Predictor``. Nothing here runs at import time; ``launch`` starts it."""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from .predict import Predictor


def example_images(folder: str | Path | None = None) -> list[str]:
    """scikit-image's bundled photographs written as PNG files (Gradio serves examples from files)."""
    from PIL import Image
    from skimage import data

    folder = Path(folder or tempfile.mkdtemp(prefix="mambaout-examples-"))
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
    from .models import read_checkpoint

    out: dict[str, dict] = {}
    for ckpt in checkpoints or []:
        path = Path(ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        arch = read_checkpoint(path).get("model_name") if path.suffix != ".onnx" else "onnx"
        name = (models or [None])[0] if arch is None else arch
        if name is None:
            raise ValueError(f"{path} does not record its model; pass --model NAME with it")
        out[f"{path.name} ({name})"] = {"model_name": None if arch else name, "checkpoint": str(path),
                                        "backend": backend}
    if not checkpoints:
        for name in models or []:
            out[f"{name} (ImageNet weights)"] = {"model_name": name, "pretrained": True, "backend": backend}
    return out


def build_demo(pool: PredictorPool, examples: list[str] | None = None, topk: int = 5):
    import gradio as gr

    names = list(pool.choices)

    def classify(image, choice):
        if image is None:
            raise gr.Error("Upload or paste an image first.")
        try:
            predictor = pool.get(choice or names[0])
            top, seconds = predictor.timed_predict(image, topk=topk)
        except Exception as e:  # the visitor sees the reason; the server keeps serving
            raise gr.Error(f"Could not classify this image: {e}") from None
        confidences = {f"{t['label']}": t["prob"] for t in top}
        return confidences, f"{predictor.name} · {seconds * 1000:.0f} ms on {predictor.backend}"

    def classify_default(image):
        return classify(image, names[0])[0]

    with gr.Blocks(title="MambaOut image classification") as demo:
        gr.Markdown("# MambaOut image classification\nUpload or paste an image and press **Classify**.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"])
                model = gr.Dropdown(names, value=names[0], label="Model")
                button = gr.Button("Classify", variant="primary")
            with gr.Column():
                label = gr.Label(num_top_classes=topk, label="Top-5", elem_id="prediction")
                timing = gr.Markdown(elem_id="timing")
        if examples:
            gr.Examples(examples=[[p] for p in examples], inputs=[image])
        button.click(classify, [image, model], [label, timing], api_name="classify")
        # The documented API: image in, label with confidences out (first model of the menu).
        hidden = gr.Button(visible=False)
        hidden.click(classify_default, [image], [label], api_name="predict")
    return demo


def launch(models: list[str] | None, checkpoints: list[str] | None, host: str = "127.0.0.1", port: int = 7860,
           backend: str = "torch", concurrency: int = 2, queue_size: int = 64, block: bool = True):
    pool = PredictorPool(choices_from_args(models, checkpoints, backend))
    pool.get(next(iter(pool.choices)))  # fail now, not at the first visitor, if the default model is broken
    demo = build_demo(pool, example_images())
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True,
                footer_links=["api"])
    return demo
