"""Real images that ship inside packages, written out as ImageFolder trees."""
from __future__ import annotations

from pathlib import Path


def export_digits(root: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                  classes: list[int] | None = None, train_per_class: int | None = None) -> dict[str, int]:
    """scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels) as ``root/{train,val}/<digit>/*.png``.

    Each image is scaled to ``size``² RGB with bicubic interpolation; the split is stratified and seeded, so
    every export is identical. ``classes``: only these digits (e.g. 5-9 for a transfer experiment);
    ``train_per_class``: only the first that many training images of each (a few-shot split; validation keeps
    all). Returns the number of images per split.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=digits.target)
    keep = set(range(10) if classes is None else classes)
    root = Path(root)
    counts = {}
    for split, ids in (("train", train_idx), ("val", val_idx)):
        taken: dict[int, int] = {}
        for i in ids:
            label = int(digits.target[i])
            if label not in keep:
                continue
            if split == "train" and train_per_class is not None and taken.get(label, 0) >= train_per_class:
                continue
            taken[label] = taken.get(label, 0) + 1
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
            img.save(folder / f"{i:04d}.png")
        counts[split] = sum(taken.values())
    return counts


def save_hf_dataset(root: str | Path, output: str | Path) -> dict[str, int]:
    """An exported digits tree (``root/{train,val}/<digit>/*.png``) as a Hugging Face ``DatasetDict`` saved to
    ``output``: splits ``train`` and ``validation``, an ``Image`` column holding each PNG's bytes and a ``ClassLabel``
    column. Returns the number of rows per split."""
    import datasets

    root = Path(root)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for split, folder in (("train", "train"), ("validation", "val")):
        files = sorted((root / folder).glob("*/*.png"))
        rows = {"image": [{"bytes": f.read_bytes(), "path": None} for f in files],
                "label": [classes.index(f.parent.name) for f in files]}
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.disable_progress_bars()  # a bar per split for a one-second save is noise
    try:
        datasets.DatasetDict(splits).save_to_disk(str(output))
    finally:
        datasets.enable_progress_bars()
    return {k: len(v) for k, v in splits.items()}
