"""A generated dataset of coloured shapes with exact boxes, masks and classes, written in the COCO layout
(``annotations/instances_{split}.json`` + ``{split}/*.jpg``) or the ADE20K layout
(``images/{training,validation}/*.jpg`` + ``annotations/{training,validation}/*.png``).

It stands in for COCO and ADE20K in tests and the quickstart: the ground truth is known to the pixel, so an
evaluation can be checked exactly and a small model can learn it in minutes on a CPU.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle")
# Deliberately not 1..K: loaders must map COCO category ids to contiguous labels and back.
CATEGORY_IDS = (1, 3, 5)
# ADE20K-style label values: 0 = unlabelled (ignored after the zero-label shift), 1 = background, 2.. = shapes.
ADE_CLASSES = ("background", *CLASSES)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "circle":
        n, start = 48, 0.0
    elif kind == "square":
        n, start = 4, angle + math.pi / 4
    else:
        n, start = 3, angle - math.pi / 2
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n))
            for k in range(n)]


def _scene(rng: np.random.Generator, height: int, width: int, max_shapes: int, radius: tuple[float, float]):
    """One image: a noisy two-tone background and 1..max_shapes non-overlapping shapes of radius ``radius``
    (fractions of the shorter side)."""
    top, bottom = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    bg = np.clip(bg + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    canvas = bg.copy()
    yy, xx = np.mgrid[:height, :width]
    # Each class has its own fill texture as well as its outline (solid, stripes, checks): semantic
    # segmentation decides per pixel, and a texture is the local cue real classes (grass, brick, sky) have too.
    textures = [np.ones((height, width), bool), (yy // 3) % 2 == 0, ((yy // 3) + (xx // 3)) % 2 == 0]
    shapes, boxes = [], []
    short = min(height, width)
    target = int(rng.integers(1, max_shapes + 1))
    for _ in range(30 * target):  # rejection sampling for free space
        if len(shapes) >= target:
            break
        r = rng.uniform(*radius) * short
        cx, cy = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
        box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        label = int(rng.integers(len(CLASSES)))
        poly = _polygon(CLASSES[label], cx, cy, r, rng.uniform(0, 2 * math.pi))
        # A colour far from the local background so every shape is visible.
        local = bg[int(cy), int(cx)].astype(float)
        colour = tuple(int(c) for c in np.where(local > 127, rng.uniform(0, 70, 3), rng.uniform(185, 255, 3)))
        inside = _mask(poly, height, width) > 0
        shade = np.where(textures[label][..., None], np.array(colour), np.array(colour) * 0.5 + local * 0.5)
        canvas[inside] = shade[inside].astype(np.uint8)
        boxes.append(box)
        shapes.append((label, poly))
    return Image.fromarray(canvas).filter(ImageFilter.GaussianBlur(0.5)), shapes


def _mask(poly, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(poly, fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def make_shapes(root: str | Path, layout: str = "coco", n_train: int = 200, n_val: int = 50,
                size: tuple[int, int] = (128, 128), max_shapes: int = 3, seed: int = 0,
                radius: tuple[float, float] | None = None) -> Path:
    """Write the dataset under ``root`` in ``layout`` ('coco' or 'ade20k'); returns ``root``.

    size: (height, width) of every image. The same seed gives the same files.
    radius: shape radius range as fractions of the shorter side; by default 0.08-0.22 for COCO (objects of
        several scales) and 0.15-0.3 for ADE20K (shapes then cover about a third of the pixels, as stuff and
        things do in real scenes, rather than leaving nine pixels in ten to the background class).
    """
    radius = radius or ((0.08, 0.22) if layout == "coco" else (0.15, 0.3))
    if layout not in ("coco", "ade20k"):
        raise ValueError(f"layout must be 'coco' or 'ade20k', got {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    splits = {"coco": ("train2017", "val2017"), "ade20k": ("training", "validation")}[layout]
    for split, count in zip(splits, (n_train, n_val)):
        scenes = [_scene(rng, height, width, max_shapes, radius) for _ in range(count)]
        if layout == "coco":
            _write_coco(root, split, scenes, height, width)
        else:
            _write_ade(root, split, scenes, height, width)
    return root


def _write_coco(root: Path, split: str, scenes, height: int, width: int) -> None:
    from pycocotools import mask as mask_utils

    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (image, shapes) in enumerate(scenes):
        name = f"{i:06d}.jpg"
        image.save(root / split / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        for label, poly in shapes:
            m = _mask(poly, height, width)
            ys, xs = np.nonzero(m)
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0 = float(xs.min()), float(ys.min())
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORY_IDS[label],
                "bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
                "area": float(m.sum()), "segmentation": rle, "iscrowd": 0,
            })
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CATEGORY_IDS, CLASSES)]
    payload = {"images": images, "annotations": annotations, "categories": categories,
               "info": {"description": "mambaout generated shapes"}}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))


def _write_ade(root: Path, split: str, scenes, height: int, width: int) -> None:
    # Class names after the zero-label shift, one per line: the segmentation loader reads them when present.
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(ADE_CLASSES) + "\n")
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i, (image, shapes) in enumerate(scenes):
        label = np.ones((height, width), dtype=np.uint8)  # 1 = background
        for cls, poly in shapes:
            label[_mask(poly, height, width) > 0] = cls + 2
        label[:2, :] = label[-2:, :] = 0  # an unlabelled border, as ADE20K has unlabelled pixels
        label[:, :2] = label[:, -2:] = 0
        image.save(root / "images" / split / f"shapes_{i:06d}.jpg", quality=95)
        Image.fromarray(label).save(root / "annotations" / split / f"shapes_{i:06d}.png")
