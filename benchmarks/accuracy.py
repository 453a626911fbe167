"""What each deployment path costs in accuracy: its logits against PyTorch float32 on real images.

Uses a trained checkpoint (default: the README quickstart's ``runs/quickstart/best.pt``, trained on
scikit-learn's real handwritten digits; the script runs the quickstart first if it is missing) and its
validation images, or any checkpoint and image folder you name — for example the official ImageNet weights
and a folder of photographs. For each path (``--fast``, ONNX Runtime float32 and INT8, OpenVINO float32,
bfloat16 and INT8) it reports top-1 agreement with float32, the largest absolute logit difference and the
largest relative one (to the image's largest float32 logit), and each path's top-1 accuracy when the folder is
labelled by class subfolders. INT8 paths calibrate on ``--calib-dir`` (default: the quickstart's training
images, never the images scored); paths whose runtime is not installed are skipped with a note.

    python benchmarks/accuracy.py
    python benchmarks/accuracy.py --checkpoint mambaout_tiny.pth --images photos/ --calib-dir other_photos/
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def ensure_quickstart(checkpoint: Path, data: Path) -> None:
    if checkpoint.exists() and data.exists():
        return
    exe = [sys.executable, "-m", "mambaout"]
    if not data.exists():
        subprocess.run(exe + ["prepare-digits", str(data.parent)], check=True, stdout=sys.stderr)
    if not checkpoint.exists():
        subprocess.run(exe + ["train", "--recipe", "quickstart", "--data-dir", str(data.parent),
                              "--output", str(checkpoint.parent)], check=True, stdout=sys.stderr)


PATHS = {  # name -> (Predictor keywords, packages it needs)
    "--fast": (dict(fast=True), ()),
    "ONNX Runtime fp32": (dict(backend="onnx"), ("onnxruntime",)),
    "ONNX Runtime int8": (dict(backend="onnx", int8=True), ("onnxruntime",)),
    "OpenVINO fp32": (dict(backend="openvino"), ("openvino",)),
    "OpenVINO bf16 (--fast)": (dict(backend="openvino", fast=True), ("openvino",)),
    "OpenVINO int8": (dict(backend="openvino", int8=True), ("openvino", "nncf")),
}


def build_paths(checkpoint: Path, calib_dir: Path, calib_size: int, only: list[str] | None):
    """The reference Predictor and one per path that can run here (the rest named in ``skipped``)."""
    import importlib.util
    import warnings

    from mambaout.infer.deploy import calibration_images
    from mambaout.infer.predict import Predictor

    ref = Predictor(checkpoint=checkpoint)
    calib = None
    paths, skipped = {}, []
    for name, (kw, needs) in PATHS.items():
        if only and name not in only:
            continue
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            skipped.append(f"{name}: needs {', '.join(missing)}")
            continue
        if kw.get("int8") and calib is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                calib, _ = calibration_images(calib_dir, ref.data_config, calib_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # --fast on a CPU without bf16 says so itself
            paths[name] = Predictor(checkpoint=checkpoint, calib_images=calib if kw.get("int8") else None, **kw)
    return ref, paths, skipped


def compare(checkpoint: Path, images: Path, batch_size: int, calib_dir: Path, calib_size: int = 300,
            only: list[str] | None = None) -> dict:
    from mambaout.data.safe import load_image
    from mambaout.infer.predict import expand_inputs

    ref, paths, skipped = build_paths(checkpoint, calib_dir, calib_size, only)
    files = expand_inputs([images])
    if not files:
        raise SystemExit(f"no images under {images}")
    classes = sorted({p.parent.name for p in files})
    labelled = len(classes) > 1
    stats = {name: dict(agree=0, correct=0, max_abs=0.0, max_rel=0.0) for name in paths}
    n = correct_ref = 0
    for s in range(0, len(files), batch_size):
        chunk = files[s:s + batch_size]
        imgs = [load_image(p) for p in chunk]
        a = ref.logits(imgs)
        truth = torch.tensor([ref.labels.index(p.parent.name) if p.parent.name in ref.labels else -1 for p in chunk])
        correct_ref += int((a.argmax(1) == truth).sum()) if labelled else 0
        for name, pred in paths.items():
            b, st = pred.logits(imgs), stats[name]
            diff = (a - b).abs()
            st["max_abs"] = max(st["max_abs"], diff.max().item())
            st["max_rel"] = max(st["max_rel"], (diff.max(1).values / a.abs().max(1).values).max().item())
            st["agree"] += int((a.argmax(1) == b.argmax(1)).sum())
            st["correct"] += int((b.argmax(1) == truth).sum()) if labelled else 0
        n += len(chunk)
    rows = [{"path": name, "precision": _precision(name, pred), "top1": st["correct"] / n if labelled else None,
             "top1_agreement": st["agree"] / n, "max_abs_logit_diff": st["max_abs"],
             "max_rel_logit_diff": st["max_rel"]} for (name, pred), st in zip(paths.items(), stats.values())]
    return {"checkpoint": str(checkpoint), "images": str(images), "n_images": n, "calib_dir": str(calib_dir),
            "top1_fp32": correct_ref / n if labelled else None, "paths": rows, "skipped": skipped}


def _precision(name: str, pred) -> str:
    if "int8" in name:
        return "int8"
    if pred.backend == "openvino":
        return pred._runtime.config["INFERENCE_PRECISION_HINT"].replace("f32", "float32").replace("bf16", "bfloat16")
    return str(pred.dtype).replace("torch.", "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs/quickstart/best.pt")
    p.add_argument("--images", type=Path, default=ROOT / "data/digits/val")
    p.add_argument("--calib-dir", type=Path, default=ROOT / "data/digits/train",
                   help="images the INT8 paths calibrate on (default: the quickstart's training images)")
    p.add_argument("--calib-size", type=int, default=300)
    p.add_argument("--paths", default=None, help=f"comma-separated subset of: {', '.join(PATHS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.checkpoint == ROOT / "runs/quickstart/best.pt":
        ensure_quickstart(a.checkpoint, a.images)
    only = [x.strip() for x in a.paths.split(",")] if a.paths else None
    r = compare(a.checkpoint, a.images, a.batch_size, a.calib_dir, a.calib_size, only)
    if a.json:
        print(json.dumps(r))
        return 0
    print(header(f"{r['checkpoint']} on {r['n_images']} images of {r['images']}; int8 calibrated on "
                 f"{r['calib_dir']}"))
    print()

    def pct(v):
        return "—" if v is None else f"{100 * v:.2f}%"
    rows = [["fp32 eager", "float32", pct(r["top1_fp32"]), "—", "—", "—"]]
    rows += [[x["path"], x["precision"], pct(x["top1"]), pct(x["top1_agreement"]), f"{x['max_abs_logit_diff']:.3g}",
              f"{x['max_rel_logit_diff']:.2%}"] for x in r["paths"]]
    print(table(["path", "precision", "top-1", "top-1 agreement with fp32", "max abs logit diff",
                 "max rel logit diff"], rows))
    for note in r["skipped"]:
        print(f"skipped {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
