"""Data loading that survives bad files: image decoding with a pixel limit, datasets that skip unreadable samples
(one warning per file) or stop on them (``strict``), and a collate function that drops the skipped samples.

The convention every dataset of this package follows: ``dataset[i]`` is ``None`` when the file behind sample
``i`` cannot be decoded, after one warning naming the file; with ``strict=True`` it raises ``DataFileError``
instead. ``collate_skip`` drops the ``None`` items of a batch (and returns ``None`` when nothing is left), so a
training loop counts what was skipped as ``expected batch size - count_samples(batch)``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset, default_collate

from ..utils.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

# Pillow's own default. Pillow only *warns* between this and twice it, so the limit is enforced here instead.
MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_ENV = "MAMBAOUT_MAX_IMAGE_PIXELS"


class ImageLoadError(ValueError):
    """An input that is not a readable image; the message names the file (also in ``path``)."""

    path: str | None = None
    reason: str = ""


class DataFileError(ValueError):
    """A data file that cannot be used, raised instead of skipping it when loading is strict."""


class BadSampleWarning(UserWarning):
    """A sample skipped because its file cannot be read."""


def max_image_pixels() -> int:
    """The pixel limit in force: ``$MAMBAOUT_MAX_IMAGE_PIXELS`` when set, else ``MAX_IMAGE_PIXELS``."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"environment variable {MAX_PIXELS_ENV}={raw!r} must be a positive whole number of pixels")
    return value


def image_error(name: str, reason: str) -> ImageLoadError:
    """An ``ImageLoadError`` for the sample ``name`` (a file, ``SHARD:KEY``, ``DATASET[row]``) and why it is
    unusable."""
    err = ImageLoadError(f"{name}: {reason}")
    err.path, err.reason = name, reason
    return err


def _too_many_pixels(name: str, pixels: int, limit: int, size: tuple[int, int] | None = None) -> ImageLoadError:
    dims = f"{size[0]}x{size[1]} = " if size else ""
    return image_error(name, f"refused, {dims}{pixels:,} pixels is over the limit of {limit:,} "
                              f"(a decompression bomb?); set {MAX_PIXELS_ENV} to allow larger images")


def source_name(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<image>")


@contextlib.contextmanager
def open_image(source, name: str | None = None) -> Iterator[Image.Image]:
    """``Image.open`` that refuses images over ``max_image_pixels()`` from their header, before any pixel is
    decoded, and turns every failure to open or decode (inside the ``with`` block too) into ``ImageLoadError``."""
    from PIL import Image, UnidentifiedImageError

    name = name or source_name(source)
    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        # Asking for a larger limit must not be overruled by Pillow's own (which raises at twice its value).
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            # The size is checked just below against our limit; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except FileNotFoundError:
        raise image_error(name, "file not found") from None
    except IsADirectoryError:
        raise image_error(name, "is a folder, not an image") from None
    except PermissionError:
        raise image_error(name, "permission denied") from None
    except UnidentifiedImageError:
        raise image_error(name, "not an image Pillow can read") from None
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_many_pixels(name, int(found.group(1)) if found else 0, limit) from None
    except Exception as e:  # Pillow's parsers raise almost any exception type on malformed headers
        raise image_error(name, f"unreadable image ({type(e).__name__}: {e})") from None
    with img:
        width, height = img.size
        if width * height > limit:
            raise _too_many_pixels(name, width * height, limit, (width, height))
        try:
            yield img
        except ImageLoadError:
            raise
        except Exception as e:  # decoding is lazy, so malformed pixel data fails inside the block
            raise image_error(name, f"unreadable image ({type(e).__name__}: {e})") from None


def to_rgb(img):
    """Any Pillow image as 8-bit RGB: high-bit-depth greys are rescaled, transparency is laid on white."""
    import numpy as np
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(source, name: str | None = None) -> Image.Image:
    """Open a path or file object as RGB, honouring EXIF orientation; any failure is an ``ImageLoadError``
    naming the file (or ``name``: the shard member or dataset row an in-memory image came from)."""
    from PIL import ImageOps

    with open_image(source, name) as img:
        # exif_transpose copies the whole image even when there is nothing to turn: ask first.
        if img.getexif().get(0x0112, 1) not in (1, None):
            img = ImageOps.exif_transpose(img)
        img.load()
        return to_rgb(img)


# ------------------------------------------------------------------------------------------- skipping samples
def _remove_dir(path: str, owner_pid: int) -> None:
    # Forked DataLoader workers inherit this finaliser; only the process that made the folder may delete it.
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


def _emit(message: str) -> None:
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        warnings.warn(message, BadSampleWarning, stacklevel=3)
    else:
        # A worker's warning filters and handlers are a copy taken when it started (a harness recording warnings
        # in the parent would swallow them there), so a worker writes its one line straight to stderr.
        print(f"{BadSampleWarning.__name__}: {message}", file=sys.stderr, flush=True)


class BadSampleLog:
    """What a dataset does with a sample whose file cannot be read.

    Not strict: warn once per file and give ``None``. "Once" holds across DataLoader worker processes and epochs
    (workers are re-created each epoch, so an in-memory set would not do): the first process to report a file
    leaves a marker in a private temporary folder. Strict: raise ``DataFileError`` naming the file and the cause.
    """

    def __init__(self, strict: bool = False):
        self.strict = bool(strict)
        self._seen: set[str] = set()
        owner = os.getpid()
        self._dir = os.path.join(tempfile.gettempdir(), f"mambaout-bad-samples-{owner}-{uuid.uuid4().hex[:12]}")
        weakref.finalize(self, _remove_dir, self._dir, owner)

    def report(self, path, error: BaseException) -> None:
        path = str(path)
        reason = getattr(error, "reason", "") or str(error)
        if self.strict:
            raise DataFileError(f"cannot use data file {path}: {reason} (strict loading stops at the first bad file; "
                                f"without strict it is skipped with a warning)") from error
        if self._first_report(path):
            _emit(f"skipping unreadable data file {path}: {reason}")

    def _first_report(self, path: str) -> bool:
        if path in self._seen:
            return False
        self._seen.add(path)
        marker = os.path.join(self._dir, hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest())
        try:
            os.makedirs(self._dir, exist_ok=True)
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        except OSError:
            return True  # no usable temporary folder: a warning per process beats none
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(path)
        return True

    def files(self) -> list[str]:
        """Every file reported so far, by this process or any of its DataLoader workers."""
        found = set(self._seen)
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._dir):
                with contextlib.suppress(OSError), open(entry.path, encoding="utf-8", errors="surrogateescape") as f:
                    found.add(f.read())
        return sorted(p for p in found if p)


class SkipBadSamples(Dataset):
    """``dataset`` with ``None`` for every item whose file cannot be read (an ``ImageLoadError`` from its loader),
    or ``DataFileError`` with ``strict=True``. Other attributes (``classes``, ``samples``, ...) are the wrapped
    dataset's; set them on ``.dataset``.

    path_of: the file behind item ``i``, for errors that do not name it (default: ``dataset.samples[i][0]``).
    """

    def __init__(self, dataset, strict: bool = False, path_of: Callable[[int], Any] | None = None):
        self.dataset = dataset
        self.path_of = path_of
        self.log = BadSampleLog(strict)

    @property
    def strict(self) -> bool:
        return self.log.strict

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except ImageLoadError as e:
            return self.log.report(e.path or self._path(index), e)

    def _path(self, index: int):
        if self.path_of is not None:
            return self.path_of(index)
        samples = getattr(self.dataset, "samples", None)
        return samples[index][0] if samples is not None else f"item {index}"

    def bad_files(self) -> list[str]:
        return self.log.files()

    def __getattr__(self, name: str):
        # Only reached for names the wrapper lacks; guarded so unpickling (before __dict__ exists) cannot recurse.
        if name.startswith("__") or name in ("dataset", "path_of", "log"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_skip(batch, inner: Callable = default_collate):
    """``inner`` applied to the items of ``batch`` that are not ``None``; ``None`` when every item was."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return inner(kept)


def count_samples(batch) -> int:
    """How many samples a collated batch holds (0 for ``None``): the length of its first field, which is the
    image tensor or image list of every dataset here."""
    if batch is None:
        return 0
    return len(batch[0])
