"""WebDataset tar shards: a spec (brace notation, glob, ``::``-joined lists) read as a stream split by rank and
by DataLoader worker, with equal steps on every rank and an order that is a pure function of (seed, epoch).

How an epoch is cut. The shards are cut into *pieces*: a whole shard when there are at least as many shards as
reading slots (ranks × workers), else every k-th sample of a shard. Training deals the pieces, in an order drawn
from (seed, epoch), to the slots so that each holds about the same number of samples (greedy, least-filled first);
evaluation deals them in file order. A training slot reads its pieces through a sample shuffle buffer and, should
its pieces run dry before its share of the epoch's batches, reads them again in a new order, so every rank takes
exactly the same number of steps whatever the shard sizes (a rank that ran out first would otherwise leave the
others waiting in an all-reduce). Evaluation reads each piece once: every image counts exactly once.

What is exact. Sample ``p`` of a slot's stream is augmented with RNGs seeded by (seed, epoch, slot, p), and the
buffer's draws by (seed, epoch, slot), so the batches of an epoch do not depend on where a run was resumed: a
resume inside an epoch skips the batches already taken (without decoding them) and continues with the very
batches an uninterrupted run would have taken, provided the number of processes and of workers is unchanged.
With another number the pieces are dealt anew and the resumed epoch is approximate: it takes the remaining
number of steps from the new deal's stream.

Sample counts come from ``_info.json`` beside the shards (timm's layout, written by ``mambaout prepare-shards``),
else from reading every shard's member names once. Class names come from ``classes.txt`` beside the shards.
"""
from __future__ import annotations

import glob
import io
import json
import math
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.utils.data import IterableDataset, get_worker_info

from ..utils.errors import ConfigError
from ..utils.optional import require
from .safe import BadSampleLog, DataFileError, ImageLoadError, collate_skip, image_error, load_image
from .seeded import sample_seed, seeded

# The keys an image may sit under, in the order they are looked for; prepare-shards keeps an image's own format,
# so the rarer ones appear when the source held them.
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
INFO_FILE = "_info.json"
CLASSES_FILE = "classes.txt"
SHUFFLE_BUFFER = 2000  # raw samples per reading slot (OpenCLIP's default); the first batch waits for a fifth


def looks_like_shards(spec: str) -> bool:
    """A shard spec names tar files, by brace notation, a glob, or a list joined with ``::``."""
    return ".tar" in spec or "::" in spec or any(c in spec for c in "*?[{")


def expand_shards(spec: str) -> list[str]:
    """Every file of ``spec``, in order; one line naming what matched nothing or what is missing."""
    from webdataset.shardlists import expand_urls

    files: list[str] = []
    for part in expand_urls(spec):
        if any(c in part for c in "*?["):
            matched = sorted(glob.glob(part))
            if not matched:
                raise ConfigError(f"no shard file matches {part!r} (from shard spec {spec!r})")
            files.extend(matched)
        elif not os.path.isfile(part):
            raise ConfigError(f"shard not found: {part} (from shard spec {spec!r})")
        else:
            files.append(part)
    if not files:
        raise ConfigError(f"shard spec {spec!r} names no files")
    return files


@dataclass
class ShardSet:
    """The shard files of a spec, their sample counts and the class names."""

    spec: str
    files: list[str]
    counts: list[int]
    class_names: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts)


def open_shards(spec: str) -> ShardSet:
    """The ``ShardSet`` of ``spec``: counts from ``_info.json`` where it lists a file, else counted; shards that
    hold nothing are left out with a warning; the class names from ``classes.txt`` (else the labels found)."""
    require("webdataset", why=f"reading WebDataset shards ({spec})")
    files = expand_shards(spec)
    known = _listed_counts(files)
    unknown = [f for f in files if os.path.basename(f) not in known]
    labels: set[int] = set()
    if len(unknown) > 8:  # reading many shards' member lists takes a while on a network file system: say why
        print(f"counting the samples of {len(unknown)} shard(s) of {spec} (no {INFO_FILE} lists them; "
              "'mambaout prepare-shards' writes one)", file=sys.stderr, flush=True)
    counts = []
    for f in files:
        if os.path.basename(f) in known:
            counts.append(known[os.path.basename(f)])
        else:
            n, found = scan_shard(f)
            counts.append(n)
            labels |= found
    empty = [f for f, n in zip(files, counts) if n == 0]
    if len(empty) == len(files):
        raise ConfigError(f"shard spec {spec!r}: its {len(files)} shard(s) hold no samples")
    if empty:
        print(f"warning: leaving out {len(empty)} shard(s) of {spec} that hold no samples: {empty[0]}"
              + (" ..." if len(empty) > 1 else ""), file=sys.stderr, flush=True)
    kept = [(f, n) for f, n in zip(files, counts) if n > 0]
    names = _class_names(files, labels)
    return ShardSet(spec, [f for f, _ in kept], [n for _, n in kept], names)


def _listed_counts(files: list[str]) -> dict[str, int]:
    """{file name: samples} from the ``_info.json`` of every folder the shards lie in."""
    counts: dict[str, int] = {}
    for folder in sorted({os.path.dirname(f) for f in files}):
        path = os.path.join(folder, INFO_FILE)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as fh:
                info = json.load(fh)
            for split in info.get("splits", {}).values():
                counts.update(zip(split["filenames"], (int(n) for n in split["shard_lengths"])))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}: not a readable shard index ({type(e).__name__}: {e}); delete it to count "
                              "the shards instead") from None
    return counts


def _class_names(files: list[str], labels: set[int]) -> list[str]:
    path = os.path.join(os.path.dirname(files[0]), CLASSES_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            names = [line.rstrip("\n") for line in fh if line.strip()]
        if names:
            return names
    if not labels:  # counts came from _info.json: read the labels once
        for f in files:
            labels |= scan_shard(f)[1]
    return [str(i) for i in range(max(labels) + 1)] if labels else []


def scan_shard(path: str) -> tuple[int, set[int]]:
    """(samples, labels) of one shard, reading its member names and its small label files; a shard cut short is
    counted as far as it reads."""
    import tarfile

    from webdataset.tariterators import base_plus_ext

    keys: set[str] = set()
    labels: set[int] = set()
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                key, ext = base_plus_ext(member.name)
                if key is None or not member.isreg() or key.split("/")[-1].startswith("__"):
                    continue
                keys.add(key)
                if ext.lower() in ("cls", "json") and member.size < 65536:
                    label = sample_label({ext.lower(): tar.extractfile(member).read()})
                    if label is not None:
                        labels.add(label)
    except (tarfile.TarError, OSError, EOFError) as e:
        print(f"warning: shard {path} is cut short or unreadable ({type(e).__name__}: {e}); counted "
              f"{len(keys)} sample(s) before it", file=sys.stderr, flush=True)
    return len(keys), labels


def image_key(sample: dict) -> str | None:
    """The key a shard sample's image is under (``jpg``, ``png``, ...), or None."""
    return next((k for k in IMAGE_KEYS if k in sample), None)


def sample_label(sample: dict) -> int | None:
    """A shard sample's class number: its ``cls``, else its ``json``'s ``label``; None when neither reads."""
    try:
        if "cls" in sample:
            return int(sample["cls"].decode("ascii").strip())
        if "json" in sample:
            value = json.loads(sample["json"])
            return int(value["label"]) if isinstance(value, dict) and "label" in value else None
    except (ValueError, UnicodeDecodeError, TypeError):
        return None
    return None


# ------------------------------------------------------------------------------------------------ dealing
@dataclass(frozen=True)
class Piece:
    """Samples ``part``, ``part + parts``, ... of shard ``file`` (all of it when ``parts`` is 1)."""

    file: int
    part: int
    parts: int
    count: int


def deal(counts: list[int], slots: int, order: list[int] | None = None) -> list[list[Piece]]:
    """Pieces of the shards for each of ``slots`` reading slots, balanced by samples: whole shards when there are
    enough, else each shard cut into ``ceil(slots / shards)`` interleaved pieces. ``order``: the shards' order."""
    order = list(range(len(counts))) if order is None else order
    parts = max(1, math.ceil(slots / len(counts)))
    pieces = [Piece(f, j, parts, len(range(j, counts[f], parts))) for f in order for j in range(parts)]
    dealt: list[list[Piece]] = [[] for _ in range(slots)]
    loads = [0] * slots
    for piece in pieces:
        if piece.count == 0:
            continue
        s = loads.index(min(loads))
        dealt[s].append(piece)
        loads[s] += piece.count
    return dealt


def _mix(*values: int) -> int:
    """A 31-bit seed from several integers (stable across processes, unlike ``hash`` of a tuple)."""
    out = 0
    for v in values:
        out = (out * 1_000_003 + int(v) + 7_919) % (2**61 - 1)
    return out % (2**31)


# ------------------------------------------------------------------------------------------------ reading
class ShardStream(IterableDataset):
    """A ``ShardSet`` as a DataLoader's dataset (``batch_size=None``): each worker yields collated batches
    (``collate_skip``: unreadable samples left out, ``None`` when none is left).

    ``train``: shuffled, cycled to exactly ``batches`` per rank (``configure``); otherwise each sample once.
    Unreadable samples and shards cut short are skipped with one warning naming them, or raise
    ``DataFileError`` when ``strict``. ``len()`` is the whole set's sample count; ``expected()`` this rank's
    (evaluation)."""

    def __init__(self, shards: ShardSet, transform=None, train: bool = False, seed: int = 0,
                 shuffle_buffer: int = SHUFFLE_BUFFER, strict: bool = False):
        self.shards, self.transform, self.train, self.seed = shards, transform, train, seed
        self.shuffle_buffer, self.log = max(1, shuffle_buffer), BadSampleLog(strict)
        self.class_names = list(shards.class_names)
        self.epoch, self.rank, self.world, self.workers, self.batch_size = 0, 0, 1, 1, 1
        self.batches, self.skip = 0, 0

    def __len__(self) -> int:
        return self.shards.total

    @property
    def strict(self) -> bool:
        return self.log.strict

    def bad_files(self) -> list[str]:
        return self.log.files()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def configure(self, rank: int, world: int, workers: int, batch_size: int, batches: int = 0,
                  skip: int = 0) -> ShardStream:
        """This rank's reading: ``workers`` DataLoader workers (0 reads in the main process), batches of
        ``batch_size``; training yields ``batches`` batches in all over the workers, from batch ``skip`` on."""
        self.rank, self.world, self.workers = rank, world, max(1, workers)
        self.batch_size, self.batches, self.skip = batch_size, batches, skip
        return self

    def _dealt(self) -> list[list[Piece]]:
        slots = self.world * self.workers
        if not self.train:
            return deal(self.shards.counts, slots)
        order = list(range(len(self.shards.files)))
        random.Random(_mix(self.seed, self.epoch)).shuffle(order)
        return deal(self.shards.counts, slots, order)

    def expected(self) -> int:
        """The samples this rank reads in an evaluation pass."""
        dealt = self._dealt()
        return sum(p.count for s in range(self.rank * self.workers, (self.rank + 1) * self.workers)
                   for p in dealt[s])

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"ShardStream configured for {self.workers} workers, read by {info.num_workers}")
        logical = (worker + self.skip) % self.workers  # the DataLoader asks worker 0 first, for batch `skip`
        slot = self.rank * self.workers + logical
        pieces = self._dealt()[slot]
        if not self.train:
            yield from self._batches(self._samples(pieces), 0, slot, None)
            return
        done = len(range(logical, self.skip, self.workers))
        todo = len(range(logical, self.batches, self.workers)) - done
        if todo <= 0:
            return
        stream = self._shuffled(self._cycled(pieces, slot), slot)
        for _ in range(done * self.batch_size):  # batches already taken: skipped before decoding
            next(stream)
        yield from self._batches(stream, done * self.batch_size, slot, todo)

    def _batches(self, stream, position: int, slot: int, count: int | None):
        made = 0
        while count is None or made < count:
            batch = []
            for sample in stream:
                batch.append(self._decode(sample, slot, position))
                position += 1
                if len(batch) == self.batch_size:
                    break
            if not batch:
                return
            yield collate_skip(batch)
            made += 1
            if len(batch) < self.batch_size:
                return

    def _cycled(self, pieces: list[Piece], slot: int) -> Iterator[dict]:
        """The slot's pieces in a new order each pass, for as long as the epoch needs."""
        for rounds in range(sys.maxsize):
            order = list(pieces)
            random.Random(_mix(self.seed, self.epoch, slot, rounds)).shuffle(order)
            found = 0
            for sample in self._samples(order):
                found += 1
                yield sample
            if not found:
                names = sorted({self.shards.files[p.file] for p in pieces})
                raise DataFileError(f"no readable sample in shard(s) {', '.join(names[:3])}"
                                    + (" ..." if len(names) > 3 else ""))

    def _shuffled(self, stream: Iterator[dict], slot: int) -> Iterator[dict]:
        from webdataset.filters import _shuffle

        rng = random.Random(_mix(self.seed, self.epoch, slot, 104_729))
        return iter(_shuffle(stream, bufsize=self.shuffle_buffer, initial=max(1, self.shuffle_buffer // 5),
                             rng=rng))

    def raw_samples(self) -> Iterator[dict]:
        """Every sample once, undecoded, shard after shard (what ``prepare-shards`` re-shards)."""
        return self._samples([Piece(f, 0, 1, n) for f, n in enumerate(self.shards.counts)])

    def _samples(self, pieces: list[Piece]) -> Iterator[dict]:
        """The raw samples (``{'__key__', '__url__', 'jpg': bytes, 'cls': bytes, ...}``) of ``pieces``. A shard
        that ends before its listed count (a tar stream cut short ends quietly) is named as cut short."""
        from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

        for piece in pieces:
            url = self.shards.files[piece.file]
            handler = self._shard_handler(url)
            files = tar_file_expander(url_opener([{"url": url}], handler=handler), handler=handler)
            read = 0
            for read, sample in enumerate(group_by_keys(files, handler=handler), 1):
                if (read - 1) % piece.parts == piece.part:
                    yield sample
            listed = self.shards.counts[piece.file]
            if read < listed:
                self.log.report(url, ImageLoadError(f"cut short: {read} of its {listed} samples readable"))

    def _shard_handler(self, url: str):
        def handle(exn: Exception) -> bool:
            reason = str(exn.args[0]) if exn.args else type(exn).__name__
            self.log.report(url, ImageLoadError(f"cut short or unreadable after its readable samples ({reason})"))
            return False  # what follows in a damaged tar stream cannot be trusted: go on with the next shard

        return handle

    def _decode(self, sample: dict, slot: int, position: int):
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            image, label = self._parse(sample, name)
        except ImageLoadError as e:
            return self.log.report(e.path or name, e)
        if self.transform is None:
            return image, label
        if not self.train:
            return self.transform(image), label
        with seeded(sample_seed(self.seed, self.epoch, _mix(slot, position))):
            return self.transform(image), label

    def _parse(self, sample: dict, name: str):
        ext = image_key(sample)
        if ext is None:
            raise image_error(name, f"no image (looked for {', '.join(IMAGE_KEYS[:4])}, ...); keys: "
                             f"{', '.join(k for k in sample if not k.startswith('__'))}")
        label = sample_label(sample)
        if label is None:
            raise image_error(name, "no label: neither a 'cls' number nor a 'json' with 'label'")
        if self.class_names and not 0 <= label < len(self.class_names):
            raise image_error(name, f"label {label} outside the {len(self.class_names)} classes")
        return load_image(io.BytesIO(sample[ext]), name=f"{name}.{ext}"), label


__all__ = ["CLASSES_FILE", "IMAGE_KEYS", "INFO_FILE", "Piece", "ShardSet", "ShardStream", "deal", "expand_shards",
           "image_key", "looks_like_shards", "open_shards", "sample_label", "scan_shard"]
