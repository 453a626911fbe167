"""What the ``--fast`` path costs in accuracy: float32 vs fast logits on real images.

Uses a trained checkpoint (default: the README quickstart's ``runs/quickstart/best.pt``, trained on
scikit-learn's real handwritten digits; the script runs the quickstart first if it is missing) and its
validation images, or any checkpoint and image folder you name — for example the official ImageNet weights
and a folder of photographs. Reports the largest absolute and relative logit difference (relative to the
image's largest float32 logit), top-1 agreement, and each path's top-1 accuracy when the folder is labelled
by class subfolders.

    python benchmarks/accuracy.py
    python benchmarks/accuracy.py --checkpoint mambaout_tiny.pth --images photos/
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


def compare(checkpoint: Path, images: Path, batch_size: int) -> dict:
    from mambaout.data.safe import load_image
    from mambaout.infer.predict import Predictor, expand_inputs

    ref = Predictor(checkpoint=checkpoint)
    fast = Predictor(checkpoint=checkpoint, fast=True)
    paths = expand_inputs([images])
    if not paths:
        raise SystemExit(f"no images under {images}")
    classes = sorted({p.parent.name for p in paths})
    labelled = len(classes) > 1
    n = agree = correct_ref = correct_fast = 0
    max_abs = max_rel = 0.0
    for s in range(0, len(paths), batch_size):
        chunk = paths[s:s + batch_size]
        imgs = [load_image(p) for p in chunk]
        a, b = ref.logits(imgs), fast.logits(imgs)
        diff = (a - b).abs()
        max_abs = max(max_abs, diff.max().item())
        max_rel = max(max_rel, (diff.max(1).values / a.abs().max(1).values).max().item())
        agree += (a.argmax(1) == b.argmax(1)).sum().item()
        if labelled:
            truth = torch.tensor([ref.labels.index(p.parent.name) if p.parent.name in ref.labels else -1
                                  for p in chunk])
            correct_ref += (a.argmax(1) == truth).sum().item()
            correct_fast += (b.argmax(1) == truth).sum().item()
        n += len(chunk)
    return {"checkpoint": str(checkpoint), "images": str(images), "n_images": n,
            "fast_dtype": str(fast.dtype), "max_abs_logit_diff": max_abs, "max_rel_logit_diff": max_rel,
            "top1_agreement": agree / n,
            "top1_fp32": correct_ref / n if labelled else None, "top1_fast": correct_fast / n if labelled else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs/quickstart/best.pt")
    p.add_argument("--images", type=Path, default=ROOT / "data/digits/val")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.checkpoint == ROOT / "runs/quickstart/best.pt":
        ensure_quickstart(a.checkpoint, a.images)
    r = compare(a.checkpoint, a.images, a.batch_size)
    if a.json:
        print(json.dumps(r))
        return 0
    print(header(f"{r['checkpoint']} on {r['n_images']} images of {r['images']}"))
    print()
    def pct(v):
        return ("—" if v is None else f"{100 * v:.2f}%")
    print(table(["path", "weights", "top-1", "top-1 agreement with fp32", "max abs logit diff",
                 "max rel logit diff"],
                [["fp32 eager", "float32", pct(r["top1_fp32"]), "—", "—", "—"],
                 ["--fast", r["fast_dtype"].replace("torch.", ""), pct(r["top1_fast"]), pct(r["top1_agreement"]),
                  f"{r['max_abs_logit_diff']:.3g}", f"{r['max_rel_logit_diff']:.2%}"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
