"""``write_shards``: any data source (``data.sources``) as shuffled WebDataset shards, the original bytes kept.

Each sample is ``KEY.<ext>`` (the image's own file, byte for byte: ``jpg``, ``png``, ``webp``, ...), ``KEY.cls``
(the class number) and ``KEY.json`` (``{"label": k, "source": <where it came from>}``); keys are the sample's
position in the shuffled order. Beside the shards: ``classes.txt`` (one class name per line) and ``_info.json``
(timm's shard index: per split the file names and sample counts, so readers need not count). Every file is written
in a hidden folder inside the output and moved into place at the end: a stopped conversion leaves no partial
shard set behind.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from ..utils.errors import ConfigError
from ..utils.optional import require
from ..utils.progress import Progress
from .safe import BadSampleLog, ImageLoadError, image_error, load_image, open_image
from .shards import CLASSES_FILE, INFO_FILE

# Pillow's format name -> the key the image is stored under; other formats are re-encoded as PNG (counted).
FORMAT_KEYS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif",
               "TIFF": "tif", "PPM": "ppm"}


def parse_shard_size(text: str) -> tuple[int | None, float | None]:
    """``'1000'`` -> (1000 images, None); ``'200MB'`` / ``'1.5GB'`` / ``'500KB'`` -> (None, bytes)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not found or float(found.group(1)) <= 0 or (found.group(2) is None and "." in found.group(1)):
        raise ConfigError(f"--shard-size {text!r}: give a number of images (1000) or a size (200MB, 1GB)",
                          "shard_size")
    value, unit = float(found.group(1)), (found.group(2) or "").upper().replace("I", "")
    if not unit:
        return int(value), None
    return None, value * {"KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


def _splits(src: str, split: str | None = None) -> list[tuple[str, str]]:
    """(split name, source spec) pairs: both splits of a data root (train/ and val/) or of a saved ``DatasetDict``,
    else the one source as ``split`` (default: its folder's name when that is val or validation, else train)."""
    from .sources import HF_PREFIX, source_kind

    kind = source_kind(src)
    root = Path(src[len(HF_PREFIX):] if kind == "hf" else src)
    if kind == "folder" and (root / "train").is_dir() and (root / "val").is_dir():
        return [("train", str(root / "train")), ("val", str(root / "val"))]
    if kind == "hf" and ((root / "dataset_dict.json").is_file() or _parquet_splits(root) >= {"train", "val"}):
        return [("train", src), ("val", src)]
    if split is None:
        split = "val" if kind == "folder" and root.name in ("val", "validation") else "train"
    return [(split, src)]


def _parquet_splits(root: Path) -> set[str]:
    """Which of train/val a folder of Parquet files holds, by file name (the hub's ``train-00000-of-00257``)."""
    from .hf import SPLIT_NAMES

    stems = {p.name.split("-")[0].split(".")[0] for p in root.rglob("*.parquet")} if root.is_dir() else set()
    return {role for role, names in SPLIT_NAMES.items() if stems & set(names)}


def _records(spec: str, role: str, strict: bool, seed: int, image_column, label_column):
    """(class names, sample count, iterator of (encoded bytes or None, label, source name)) in a seeded random
    order: a random-access source (folder, Hugging Face) permuted outright, shards through a large buffer."""
    from .shards import ShardStream, open_shards
    from .sources import HF_PREFIX, source_kind

    kind, rng = source_kind(spec), random.Random(seed)
    if kind == "shards":
        stream = ShardStream(open_shards(spec), strict=strict)
        return stream.class_names, len(stream), _buffer_shuffled(map(_shard_record, stream.raw_samples()), rng)
    if kind == "hf":
        from .hf import HFImages

        images = HFImages(spec[len(HF_PREFIX):], role, None, image_column, label_column)
        order = list(range(len(images)))
        rng.shuffle(order)
        return images.classes, len(images), (_hf_record(images, i) for i in order)
    from torchvision.datasets import ImageFolder

    folder = Path(spec)
    if not folder.is_dir():
        raise ConfigError(f"data folder not found: {folder} (expected {folder}/<class>/<image files>)")
    try:
        tree = ImageFolder(str(folder), loader=lambda p: p)
    except FileNotFoundError as e:
        raise ConfigError(f"{folder}: {e}") from None
    samples = list(tree.samples)
    rng.shuffle(samples)
    return list(tree.classes), len(samples), ((_read(p), k, p) for p, k in samples)


def _shard_record(sample: dict):
    from .shards import image_key, sample_label

    ext, label = image_key(sample), sample_label(sample)
    return (sample[ext] if ext else None), (-1 if label is None else label), f"{sample['__url__']}:{sample['__key__']}"


def _buffer_shuffled(records: Iterator, rng: random.Random, buffer: int = 20_000) -> Iterator:
    from webdataset.filters import _shuffle

    return iter(_shuffle(records, bufsize=buffer, initial=buffer, rng=rng))


def _hf_record(images, index: int):
    row = images.ds[index]
    cell, label = row[images.image_column], row[images.label_column]
    data = cell.get("bytes") if isinstance(cell, dict) else cell if isinstance(cell, bytes) else None
    if data is None and isinstance(cell, dict) and cell.get("path"):
        data = _read(cell["path"])
    return data, int(label), images.row_name(index)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _checked(data: bytes | None, name: str) -> tuple[str, bytes]:
    """(key, bytes) of an image that decodes: its own bytes, or PNG for a format readers do not look for."""
    if not data:
        raise image_error(name, "empty or unreadable file")
    with open_image(io.BytesIO(data), name) as img:
        fmt = img.format
    image = load_image(io.BytesIO(data), name=name)  # decodes every pixel: a truncated file fails here
    if fmt in FORMAT_KEYS:
        return FORMAT_KEYS[fmt], data
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "png", out.getvalue()


class _Writer:
    """Shards of one split in ``tmp``, cut by ``max_count`` images or ``max_bytes``."""

    def __init__(self, tmp: Path, split: str, max_count: int | None, max_bytes: float | None):
        import webdataset as wds

        self.pattern = str(tmp / f"{split}-%06d.tar")
        # A fixed, whole member time: converting the same data twice gives the same bytes, and no member needs a
        # PAX header (tarfile writes one for a float time), which readers would parse for every file.
        self.sink = wds.ShardWriter(self.pattern, maxcount=max_count or 10**12, maxsize=max_bytes or 1e18,
                                    verbose=0, mtime=0)
        self.lengths: list[int] = []
        self.sink.post = lambda name: self.lengths.append(self.sink.count)

    def write(self, key: str, ext: str, data: bytes, label: int, source: str) -> None:
        meta = json.dumps({"label": label, "source": source}).encode()
        self.sink.write({"__key__": key, ext: data, "cls": str(label).encode(), "json": meta})

    def close(self) -> list[int]:
        if self.sink.tarstream is not None:
            self.sink.finish()
        if self.lengths and self.lengths[-1] == 0:  # the shard opened ahead of a sample that never came
            os.unlink(self.pattern % (len(self.lengths) - 1))
            self.lengths.pop()
        return self.lengths


def write_shards(src: str, out: str | Path, shard_size: str = "1000", seed: int = 0, strict: bool = False,
                 image_column: str | None = None, label_column: str | None = None, progress: bool = True,
                 source_name: str | None = None, split: str | None = None) -> dict:
    """Write ``src`` (a data root with train/ and val/, or one source of any kind) as shards in ``out``:
    ``{split}-000000.tar`` ..., ``classes.txt``, ``_info.json``. Samples are shuffled (seeded: a folder or a
    Hugging Face dataset by a full permutation, shards through a 20,000-sample buffer). Unreadable images are left
    out with one warning each (``strict``: stop). ``source_name``: what ``_info.json`` says the shards were made
    from (default: ``src``); ``split``: the name of a single source's shards (default: train, or val for a folder
    named val or validation). Returns the index."""
    require("webdataset", why="writing WebDataset shards")
    max_count, max_bytes = parse_shard_size(shard_size)
    if split is not None and not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ConfigError(f"--split {split!r}: letters, digits and _ only (it starts every shard's name)", "split")
    out = Path(out)
    _refuse_existing(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(out / f".prepare-shards-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        info, classes = _write_splits(src, split, tmp, max_count, max_bytes, seed, strict, image_column,
                                      label_column, progress)
        info = {"name": out.name, "source": source_name or str(src), "shard_size": str(shard_size), "seed": seed,
                **info}
        (tmp / CLASSES_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == INFO_FILE):  # the index last: it vouches for the rest
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _refuse_existing(out: Path) -> None:
    if out.is_dir() and ((out / INFO_FILE).exists() or any(out.glob("*.tar"))):
        raise ConfigError(f"{out} already holds shards ({INFO_FILE} or .tar files); remove them or choose another "
                          "output folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")


def _write_splits(src, split_name, tmp, max_count, max_bytes, seed, strict, image_column, label_column, progress):
    splits, classes, skipped = {}, None, []
    for split, spec in _splits(src, split_name):
        names, total, records = _records(spec, split, strict, seed, image_column, label_column)
        if classes is None:
            classes = names
        elif names != classes:
            raise ConfigError(f"the classes of {spec} differ from those of the training split: "
                              f"{sorted(set(names) ^ set(classes))[:5] or 'same names, other order'}")
        writer = _Writer(tmp, split, max_count, max_bytes)
        try:
            written = _write_split(writer, records, total, classes, BadSampleLog(strict), skipped,
                                   Progress(total, f"{split}: writing shards", None, progress, unit="image"))
        finally:
            lengths = writer.close()
        if not written:
            raise ConfigError(f"{spec}: no readable image to write")
        splits[split] = {"name": split, "num_samples": written, "shard_lengths": lengths,
                         "filenames": [f"{split}-{i:06d}.tar" for i in range(len(lengths))]}
    return {"splits": splits, "classes": classes, "skipped": skipped}, classes


def _write_split(writer: _Writer, records, total: int, classes: list[str], log: BadSampleLog, skipped: list,
                 bar: Progress) -> int:
    written = reencoded = 0
    for data, label, name in records:
        bar.tick()
        try:
            if not 0 <= label < len(classes):
                raise image_error(name, f"label {label} is not one of the {len(classes)} classes")
            ext, payload = _checked(data, name)
        except ImageLoadError as e:
            log.report(name, e)
            skipped.append(str(name))
            continue
        reencoded += payload is not data
        writer.write(f"{written:08d}", ext, payload, label, str(name))
        written += 1
    bar.close()
    if reencoded:
        print(f"{reencoded} image(s) in formats shard readers do not look for were re-encoded as PNG",
              file=sys.stderr)
    return written

__all__ = ["FORMAT_KEYS", "parse_shard_size", "write_shards"]
