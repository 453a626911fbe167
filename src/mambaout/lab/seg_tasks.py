"""Two generated segmentation tasks that differ only in *where* a pixel's label is decided (Hypothesis 2).

Every image has a noisy grey background, 2-4 shapes (discs and squares) and a square marker in a random corner.
Exactly one colour cue per shape says its class, one of :data:`PALETTE` (red, green, blue); everything else is
grey. Only where the cue sits differs:

* ``local``: each shape is painted in its own class's colour and the marker is grey. A pixel's neighbourhood
  decides its label, the kind of task a convolution's local window suffices for.
* ``long_range``: the shapes are grey and the marker's colour sets the class of *every* shape in the image, so
  nothing near a shape pixel tells its class: the cue is a corner away, often more than half the image.

The corner is random, so a causal raster scan sees the marker before a shape only when the marker lies in an
earlier row.

Both are written in the ADE20K layout (``images/{training,validation}``, ``annotations/...``, ``classes.txt``),
so ``mambaout segment`` and ``compare --task segment`` read them as they read ADE20K. Labels: 0 unlabelled (the
marker, ignored after the zero-label shift), 1 background, 2.. the classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("local", "long_range")
PALETTE = ((220, 40, 40), (40, 190, 60), (50, 80, 230))
NEUTRAL = (225, 225, 225)
CLASSES = ("background", "red", "green", "blue")
MARKER = 0.25  # marker side, as a fraction of the image side


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # Grey, untinted: on a tinted background the marker's colour drowned in the image's own tint, and at the CPU
    # scale no mixer, not even full attention, learned the long-range rule.
    base = rng.uniform(70, 170)
    ramp = np.linspace(-25, 25, size)[:, None, None] * rng.choice([-1, 1])
    img = base + ramp + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255)


def _colour(rng: np.random.Generator, k: int | None) -> np.ndarray:
    """Class ``k``'s colour, or the neutral grey for None, with a little jitter."""
    return np.clip(np.array(NEUTRAL if k is None else PALETTE[k]) + rng.normal(0, 10, 3), 0, 255)


def _shapes(rng: np.random.Generator, size: int, count: int, keep_out: tuple) -> list[tuple[np.ndarray, tuple]]:
    """Non-overlapping discs and squares (masks and their boxes) clear of the marker's box ``keep_out``."""
    out, boxes = [], [keep_out]
    for _ in range(60 * count):
        if len(out) == count:
            break
        r = rng.uniform(0.08, 0.15) * size
        cx, cy = rng.uniform(r + 2, size - r - 2, 2)
        box = (cx - r - 3, cy - r - 3, cx + r + 3, cy + r + 3)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        else:
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=1)
        boxes.append(box)
        out.append(np.asarray(canvas, bool))
    return out


def make_scene(rng: np.random.Generator, kind: str, size: int = 128) -> tuple[Image.Image, np.ndarray]:
    """One (image, label map) pair of task ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown segmentation task {kind!r}; choose from {', '.join(KINDS)}")
    img = _background(rng, size)
    label = np.ones((size, size), np.uint8)
    side = max(4, int(round(MARKER * size)))
    corner = int(rng.integers(4))
    y0 = 3 if corner < 2 else size - 3 - side
    x0 = 3 if corner % 2 == 0 else size - 3 - side
    image_class = int(rng.integers(len(PALETTE)))
    far = kind == "long_range"
    img[y0:y0 + side, x0:x0 + side] = _colour(rng, image_class if far else None)
    label[y0:y0 + side, x0:x0 + side] = 0
    for mask in _shapes(rng, size, int(rng.integers(2, 5)), (x0 - 4, y0 - 4, x0 + side + 4, y0 + side + 4)):
        cls = image_class if far else int(rng.integers(len(PALETTE)))
        img[mask] = _colour(rng, None if far else cls)
        label[mask] = cls + 2
    picture = Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return picture, label


def make_seg_task(root: str | Path, kind: str, n_train: int = 400, n_val: int = 100, size: int = 128,
                  seed: int = 0) -> Path:
    """Write task ``kind`` under ``root`` in the ADE20K layout; the same seed gives the same files."""
    if kind not in KINDS:
        raise ValueError(f"unknown segmentation task {kind!r}; choose from {', '.join(KINDS)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for split, count in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = make_scene(rng, kind, size)
            image.save(root / "images" / split / f"{kind}_{i:05d}.png")
            Image.fromarray(label).save(root / "annotations" / split / f"{kind}_{i:05d}.png")
    return root


__all__ = ["CLASSES", "KINDS", "NEUTRAL", "PALETTE", "make_scene", "make_seg_task"]
