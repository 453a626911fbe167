"""ImageFolder trees (``root/<class>/<images>``) for training and evaluation, sharded over processes."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Sampler

from ..utils.errors import ConfigError
from .safe import SkipBadSamples, collate_skip, load_image
from .transforms import create_eval_transform


class ShardSampler(Sampler):
    """Rank r takes items r, r + world, ...: every image is seen exactly once across ranks (no padding)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def load_image_folder(folder: Path, transform=None, data_cfg: dict | None = None, strict: bool = False):
    """An ImageFolder dataset and its class names, or a one-line error naming what is wrong with ``folder``.

    Items whose file cannot be decoded (corrupt, truncated, empty, not an image, over the pixel limit) are
    ``None`` after one warning naming the file, or raise ``DataFileError`` when ``strict``; batch them with
    ``data.safe.collate_skip``. Images are read by ``data.safe.load_image``, as ``mambaout predict`` reads them.
    """
    from torchvision.datasets import ImageFolder


    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"data folder not found: {folder} (expected {folder}/<class>/<image files>)")
    if transform is None and data_cfg is not None:
        transform = create_eval_transform(data_cfg)
    try:
        ds = ImageFolder(str(folder), transform=transform, loader=load_image)
    except FileNotFoundError as e:
        raise ConfigError(f"{folder}: {e}") from None
    return SkipBadSamples(ds, strict=strict), list(ds.classes)


def build_eval_loader(dataset, batch_size: int, workers: int, info) -> DataLoader:
    """Each image once across the ranks of ``info`` (a ``DistInfo``), in order, unreadable ones skipped."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), info.rank,
                      info.world_size), num_workers=workers, pin_memory=info.device.type == "cuda",
                      collate_fn=collate_skip)
