"""One interface to the three kinds of classification data: an ImageFolder directory, a WebDataset shard spec
(``/data/in1k/train-{000000..001023}.tar``, a glob, or specs joined with ``::``) and ``hf:PATH`` (a Hugging Face
dataset saved with ``save_to_disk``, or a folder of its Parquet files).

``open_data`` returns ``(dataset, class_names)``. An ImageFolder or a Hugging Face dataset is a map-style dataset
(random access: the sampler shuffles it, as before); shards are a ``ShardStream`` (read in order, shuffled by shard
and buffer). ``is_stream`` tells them apart; ``build_loader`` makes an evaluation loader for either.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from ..utils.errors import ConfigError
from .folder import build_eval_loader, load_image_folder
from .safe import SkipBadSamples
from .shards import SHUFFLE_BUFFER, ShardStream, looks_like_shards, open_shards

HF_PREFIX = "hf:"


def source_kind(spec: str) -> str:
    """``'hf'``, ``'shards'`` or ``'folder'``."""
    spec = str(spec)
    if spec.startswith(HF_PREFIX):
        return "hf"
    if Path(spec).is_dir():
        return "folder"
    return "shards" if looks_like_shards(spec) else "folder"


def open_data(spec: str, role: str = "train", transform=None, *, strict: bool = False, seed: int = 0,
              image_column: str | None = None, label_column: str | None = None,
              shuffle_buffer: int = SHUFFLE_BUFFER):
    """(dataset, class names) of ``spec`` for ``role`` (``'train'``: shards shuffled and cycled; ``'val'``: each
    sample once). Unreadable samples are ``None`` after a warning naming them, or ``DataFileError`` if ``strict``."""
    spec, kind = str(spec), source_kind(spec)
    if kind == "hf":
        from .hf import HFImages

        images = HFImages(spec[len(HF_PREFIX):], role, transform, image_column, label_column)
        return SkipBadSamples(images, strict=strict, path_of=images.row_name), list(images.classes)
    if kind == "shards":
        stream = ShardStream(open_shards(spec), transform, train=role == "train", seed=seed,
                             shuffle_buffer=shuffle_buffer, strict=strict)
        if not stream.class_names:
            raise ConfigError(f"shard spec {spec!r}: no class names ({'classes.txt'} beside the shards) and no labels")
        return stream, stream.class_names
    folder = Path(spec)
    if folder.is_dir() and _saved_hf(folder):
        raise ConfigError(f"{folder} is a saved Hugging Face dataset; pass it as hf:{folder}")
    if folder.is_dir() and not any(p.is_dir() for p in folder.iterdir()) and any(folder.glob("*.tar")):
        raise ConfigError(f"{folder} holds tar shards, not class folders; pass them as a shard spec, e.g. "
                          f"'{folder}/*.tar'")
    return load_image_folder(folder, transform, strict=strict)


def _saved_hf(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json"))


def is_stream(dataset) -> bool:
    return isinstance(dataset, ShardStream)


def build_loader(dataset, batch_size: int, workers: int, info) -> DataLoader:
    """Each sample once across the ranks of ``info`` (a ``DistInfo``), unreadable ones skipped: a map-style set
    split by index, a shard stream by pieces of shards."""
    if is_stream(dataset):
        dataset.configure(info.rank, info.world_size, workers, batch_size)
        return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=info.device.type == "cuda")
    return build_eval_loader(dataset, batch_size, workers, info)


__all__ = ["HF_PREFIX", "build_loader", "is_stream", "open_data", "source_kind"]
