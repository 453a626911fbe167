"""Hugging Face datasets on local disk: a folder written by ``save_to_disk`` (one split or a ``DatasetDict``), or a
folder of Parquet files (the hub's own layout, e.g. ImageNet-1k's ``data/train-*.parquet``).

The image column holds encoded bytes (the ``Image`` feature); they are read without the library decoding them,
so every image goes through ``data.safe.load_image`` as ImageFolder files do: a corrupt row is skipped with a
warning naming it (``PATH[split][row]``), or stops a strict run. Class names come from the ``ClassLabel``
feature of the label column.
"""
from __future__ import annotations

import io
from pathlib import Path

from torch.utils.data import Dataset

from ..utils.errors import ConfigError
from ..utils.optional import require
from .safe import image_error, load_image

SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "test")}
IMAGE_COLUMNS = ("image", "img", "jpg", "png", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "cls", "target", "class")


def _load(path: Path, role: str):
    """(the split of ``path`` for ``role``, its name): a saved Dataset as it is, a DatasetDict's or a Parquet
    folder's split named for the role."""
    datasets = require("datasets", why=f"reading Hugging Face datasets ({path})")
    if not path.exists():
        raise ConfigError(f"Hugging Face dataset not found: {path}")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (
            path / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError, FileNotFoundError) as e:
            raise ConfigError(f"{path}: not a readable saved dataset ({type(e).__name__}: {e})") from None
        if isinstance(loaded, datasets.DatasetDict):
            split = _pick_split(path, list(loaded), role)
            return loaded[split], split
        return loaded, ""
    files = sorted(str(p) for p in (path.rglob("*.parquet") if path.is_dir() else [path]))
    if not files:
        raise ConfigError(f"{path}: neither a dataset saved with save_to_disk nor a folder of .parquet files")
    by_split: dict[str, list[str]] = {}
    for f in files:
        stem = Path(f).name.split("-")[0].split(".")[0]
        by_split.setdefault(stem, []).append(f)
    split = _pick_split(path, list(by_split), role) if len(by_split) > 1 else next(iter(by_split))
    return datasets.load_dataset("parquet", data_files={split: by_split[split]}, split=split), split


def _pick_split(path: Path, splits: list[str], role: str) -> str:
    for name in SPLIT_NAMES[role]:
        if name in splits:
            return name
    raise ConfigError(f"{path} has splits {', '.join(splits)}; none is a {role} split "
                      f"({' or '.join(SPLIT_NAMES[role])}); point at one split's folder instead")


def _column(ds, path: Path, given: str | None, feature: str, names: tuple[str, ...], flag: str) -> str:
    import datasets

    columns = list(ds.column_names)
    if given:
        if given not in columns:
            raise ConfigError(f"{path}: no column {given!r} ({flag}); columns: {', '.join(columns)}")
        return given
    kind = getattr(datasets, feature)
    typed = [c for c in columns if isinstance(ds.features[c], kind)]
    named = [c for c in names if c in columns]
    found = typed or named
    if not found:
        raise ConfigError(f"{path}: cannot tell which column holds the {feature.lower()}s (no {feature} feature, "
                          f"none named {', '.join(names[:3])}); name it with {flag}; columns: {', '.join(columns)}")
    return found[0]


class HFImages(Dataset):
    """Rows of a local Hugging Face dataset as ``(transform(image), label)``; an undecodable image raises
    ``ImageLoadError`` naming the row (wrap in ``SkipBadSamples``)."""

    def __init__(self, path: str | Path, role: str = "train", transform=None, image_column: str | None = None,
                 label_column: str | None = None):
        import datasets

        path = Path(path)
        ds, split = _load(path, role)
        self.image_column = _column(ds, path, image_column, "Image", IMAGE_COLUMNS, "--image-column")
        self.label_column = _column(ds, path, label_column, "ClassLabel", LABEL_COLUMNS, "--label-column")
        ds = ds.select_columns([self.image_column, self.label_column])
        if isinstance(ds.features[self.image_column], datasets.Image):
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        label_feature = ds.features[self.label_column]
        if isinstance(label_feature, datasets.ClassLabel):
            self.classes = list(label_feature.names)
        else:
            labels = ds.unique(self.label_column)
            if not all(isinstance(v, int) for v in labels):
                raise ConfigError(f"{path}: column {self.label_column!r} holds {type(labels[0]).__name__} values, "
                                  "not class numbers (a ClassLabel feature)")
            self.classes = [str(i) for i in range(max(labels) + 1)]
        self.ds, self.transform = ds, transform
        self.name = f"{path}[{split}]" if split else str(path)

    def __len__(self) -> int:
        return len(self.ds)

    def row_name(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def __getitem__(self, index: int):
        row = self.ds[int(index)]
        image, label = row[self.image_column], row[self.label_column]
        name = self.row_name(index)
        if isinstance(image, dict):  # the Image feature undecoded: {'bytes': ..., 'path': ...}
            data = image.get("bytes")
            source = io.BytesIO(data) if data else image.get("path")
            if not source:
                raise image_error(name, "the image cell is empty")
        elif isinstance(image, (bytes, bytearray)):
            source = io.BytesIO(image)
        elif image is None:
            raise image_error(name, "the image cell is empty")
        else:  # an already decoded PIL image (a column the library decodes itself)
            source = image
        img = load_image(source, name=name) if not hasattr(source, "convert") else source.convert("RGB")
        if label is None or not 0 <= int(label) < len(self.classes):
            raise image_error(name, f"label {label!r} is not one of the {len(self.classes)} classes")
        return (self.transform(img) if self.transform is not None else img), int(label)


__all__ = ["HFImages", "SPLIT_NAMES"]
