"""Predictions of a trained detector or segmenter drawn on image files: boxes and masks, or colourised label maps
blended over the input. One unreadable file is reported and skipped; the others are still drawn."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image


def _to_tensor(image: Image.Image) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image).float().div_(255)


@torch.no_grad()
def detect_image(task, image: Image.Image, device, score_threshold: float = 0.5):
    """(drawn image, detections as plain data) for one RGB image."""
    from .coco import draw_detections

    out = task.model([_to_tensor(image).to(device)])[0]
    out = {k: v.cpu() for k, v in out.items()}
    keep = out["scores"] >= score_threshold
    dets = [{"label": task.class_names[int(lbl) - 1] if 0 < int(lbl) <= len(task.class_names) else str(int(lbl)),
             "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
            for lbl, s, b in zip(out["labels"][keep], out["scores"][keep], out["boxes"][keep])]
    return draw_detections(image, out, task.class_names, score_threshold=score_threshold), dets


@torch.no_grad()
def segment_image(task, image: Image.Image, device, alpha: float = 0.5):
    """(blended image, area share of each predicted class) for one RGB image."""
    from .ade import blend, normalize_image
    from .segmentation import predict_probs

    cfg = task.cfg
    x = normalize_image(image)[None].to(device)
    probs = predict_probs(task.model, x, out_size=(image.height, image.width), scales=(1.0,), flip=False,
                          base_scale=tuple(cfg.scale), mode=cfg.eval_mode, crop_size=cfg.crop_size,
                          stride=cfg.eval_stride)
    labels = probs.argmax(1)[0].cpu()
    counts = torch.bincount(labels.flatten(), minlength=task.num_classes).float() / labels.numel()
    names = task.class_names or [f"class_{i}" for i in range(task.num_classes)]
    shares = {names[i]: round(float(c), 4) for i, c in enumerate(counts) if c > 0}
    shares = dict(sorted(shares.items(), key=lambda kv: -kv[1]))
    return blend(image, labels.numpy(), alpha=alpha), shares


def predict_files(task_name: str, checkpoint: str | Path, paths: list[Path], output: str | Path,
                  device: str = "cpu", option: float | None = None) -> Iterator[dict]:
    """Draw predictions for every file in ``paths`` into ``output``; yield one result dict per file (with an
    ``error`` key for a file that could not be read) and append it to ``output/predictions.jsonl``."""
    from ..infer.predict import load_image
    from .tasks import load_dense

    task = load_dense(checkpoint, task_name, device)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    with open(output / "predictions.jsonl", "a") as log:
        for i, path in enumerate(paths):
            res: dict = {"path": str(path)}
            try:
                image = load_image(path)
            except (OSError, ValueError) as e:
                res["error"] = str(e)
            else:
                if task_name == "detect":
                    drawn, dets = detect_image(task, image, device, 0.5 if option is None else option)
                    res.update(detections=dets, summary=f"{len(dets)} detection(s)")
                else:
                    drawn, shares = segment_image(task, image, device, 0.5 if option is None else option)
                    top = ", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:3])
                    res.update(class_share=shares, summary=top)
                name = f"{path.stem}.png" if path.stem not in used else f"{path.stem}_{i}.png"
                used.add(path.stem)
                drawn.save(output / name)
                res["drawn"] = str(output / name)
            log.write(json.dumps(res) + "\n")
            log.flush()
            yield res
