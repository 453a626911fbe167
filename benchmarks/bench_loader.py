"""Training-loader throughput: augmented images/s from each data source, ours against timm's ``create_loader``.

The data: scikit-image's photographs, re-encoded as JPEGs at ImageNet's typical sizes (500×375 and the like,
quality 90), one class per photograph, written once as an ImageFolder tree, as WebDataset shards (``mambaout
prepare-shards``) and as a Hugging Face dataset (saved to disk, and as Parquet for timm's ``hfds/`` reader).

The pipeline is the paper's DeiT recipe at 224²: RandomResizedCrop (bicubic/bilinear at random), flip,
RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.4, normalisation, then Mixup/CutMix and random erasing 0.25 on
the batch. Ours is ``mambaout train``'s own loader and batch step (``ClassifyTask.batches`` + ``micro_batch``);
timm's is what its ``train.py`` builds (``create_dataset`` + ``create_loader`` with its prefetcher on this
device and ``FastCollateMixup``). Each measurement builds a fresh loader, discards the first batches (worker
start-up) and times the next ones; the two libraries are interleaved, and medians are reported.

``--profile`` adds where one worker's time goes per image (read, decode, crop, RandAugment and jitter, to tensor),
and what Pillow's JPEG draft mode would save at the evaluation resize.

    python benchmarks/bench_loader.py [--images N] [--batch 32] [--batches 10] [--rounds 5] [--profile]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle")
SIZES = ((500, 375), (375, 500), (500, 333), (500, 500), (400, 300), (640, 480), (333, 500), (500, 400))
# A sample buffer far smaller than the data on both sides (timm's default holds 8,192, ours 2,000): at these few
# hundred images a full-size buffer would keep re-reading the shards to fill itself, which a real epoch does once.
SHUFFLE = 64
RECIPE = dict(img_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.4,
              auto_augment="rand-m9-mstd0.5-inc1", train_interpolation="random", mixup=0.8, cutmix=1.0,
              smoothing=0.1, reprob=0.25)


def make_data(root: Path, n: int) -> dict[str, str]:
    """The photographs as ``n`` JPEGs in the three layouts; returns each source's spec."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from mambaout.data.convert import write_shards

    rng = np.random.default_rng(0)
    photos = {}
    for name in PHOTOS:
        a = getattr(data, name)()
        photos[name] = Image.fromarray(a[0] if isinstance(a, tuple) else a).convert("RGB")
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        img = photos[name]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = img.crop((x, y, x + cw, y + ch)).resize(SIZES[i % len(SIZES)], Image.BICUBIC)
        folder = root / "folder" / name
        folder.mkdir(parents=True, exist_ok=True)
        out.save(folder / f"{i:05d}.jpg", quality=90)
    write_shards(str(root / "folder"), root / "shards", shard_size="50", progress=False)
    _write_hf(root)
    return {"folder": str(root / "folder"), "shards": str(root / "shards" / "train-*.tar"),
            "hf": f"hf:{root / 'hf'}"}


def _write_hf(root: Path) -> None:
    import datasets

    files = sorted((root / "folder").glob("*/*.jpg"))
    names = sorted({f.parent.name for f in files})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": None} for f in files],
                                     "label": [names.index(f.parent.name) for f in files]}, features=features)
    ds.save_to_disk(str(root / "hf"))
    (root / "parquet" / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "parquet" / "data" / "train-00000-of-00001.parquet"))


def ours(spec: str, workers: int, batch: int, folder: str, full: bool):
    """``mambaout train``'s loader for ``spec`` (with ``full``, and its batch step: normalisation, Mixup/CutMix,
    random erasing): a function giving the batch iterator."""
    from mambaout.classify.config import resolve_config
    from mambaout.classify.train import ClassifyTask
    from mambaout.engine.distributed import DistInfo

    cfg = resolve_config({**RECIPE, "model": "mambaout_femto", "train_data": spec, "val_data": folder,
                          "batch_size": batch, "workers": workers, "shuffle_buffer": SHUFFLE,
                          "output": tempfile.mkdtemp()}, recipe="quickstart")
    task, info = ClassifyTask(cfg), DistInfo()
    task.check(info)
    task.schedule(len(task.train_set) // batch, batch)

    def batches():
        for b in task.batches(0, info, 1):
            yield task.micro_batch(b, info, 0, 0, 1)[0][0] if full else b[0]

    return batches


def timm_loader(source: str, root: Path, workers: int, batch: int, full: bool):
    """timm's own path for the same data: its dataset reader and ``create_loader`` as its train.py calls them
    (with ``full``, and its ``FastCollateMixup`` and prefetcher: normalisation and random erasing; without, the
    DataLoader under the prefetcher, collating with ``fast_collate``)."""
    from timm.data import FastCollateMixup, create_dataset, create_loader

    if source == "folder":
        ds = create_dataset("", root=str(root / "folder"), split="train", is_training=True)
    elif source == "shards":
        ds = create_dataset("wds/bench", root=str(root / "shards"), split="train", is_training=True,
                            batch_size=batch, seed=0, sample_shuffle_size=SHUFFLE, sample_initial_size=SHUFFLE // 4)
    else:
        ds = create_dataset(f"hfds/{root / 'parquet'}", root=str(root / "hf_cache"), split="train",
                            is_training=True)
    mix = FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=len(PHOTOS))

    def batches():
        loader = create_loader(ds, input_size=(3, 224, 224), batch_size=batch, is_training=True, re_prob=0.25,
                               re_mode="pixel", scale=RECIPE["scale"], ratio=RECIPE["ratio"], hflip=0.5,
                               color_jitter=0.4, auto_augment=RECIPE["auto_augment"], interpolation="random",
                               num_workers=workers, collate_fn=mix if full else None,
                               device=torch.device("cpu"), use_prefetcher=True, persistent_workers=False)
        for images, _ in (loader if full else loader.loader):
            yield images

    return batches


def images_per_second(make_batches, batch: int, batches: int, skip: int = 2) -> float:
    it = make_batches()
    for _ in range(skip):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        images = next(it)
        assert images.shape[1:] == (3, 224, 224)
    elapsed = time.perf_counter() - t0
    del it
    return batches * batch / elapsed


def _plain_decode(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _draft_decode(data: bytes, size: int = 256):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (size, size))  # DCT scaling by 1/2, 1/4, 1/8 while the result stays at least `size`
    return img.convert("RGB")


def profile(root: Path, n: int = 60) -> list[list[object]]:
    """Per-image milliseconds of each stage of one worker's pipeline, and the JPEG draft saving at eval size."""
    from timm.data import create_transform
    from timm.data.transforms import MaybePILToTensor

    from mambaout.data.safe import load_image

    files = sorted((root / "folder").glob("*/*.jpg"))[:n]
    primary, secondary, to_float = create_transform(224, is_training=True, scale=RECIPE["scale"],
                                                    ratio=RECIPE["ratio"], color_jitter=0.4,
                                                    auto_augment=RECIPE["auto_augment"], interpolation="random",
                                                    separate=True)
    to_uint8 = MaybePILToTensor()
    stages = {"read bytes": [], "decode (ours: checks, EXIF, RGB)": [], "crop + flip": [],
              "RandAugment + jitter": [], "to uint8 tensor (the worker's last step)": [],
              "decode (plain PIL, for comparison)": [], "to float + normalise (no longer in the worker)": [],
              "decode in draft mode (eval resize 256)": []}

    def timed(key, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        stages[key].append(time.perf_counter() - t)
        return out

    for f in files:
        data = timed("read bytes", f.read_bytes)
        img = timed("decode (ours: checks, EXIF, RGB)", load_image, io.BytesIO(data))
        timed("decode (plain PIL, for comparison)", _plain_decode, data)
        x = timed("crop + flip", primary, img)
        x = timed("RandAugment + jitter", secondary, x)
        timed("to uint8 tensor (the worker's last step)", to_uint8, x)
        timed("to float + normalise (no longer in the worker)", to_float, x)
        timed("decode in draft mode (eval resize 256)", _draft_decode, data)
    worker = list(stages)[:5]
    total = sum(statistics.mean(stages[k]) for k in worker)
    return [[k, f"{statistics.mean(v) * 1e3:.2f}", f"{statistics.mean(v) / total:.0%}" if k in worker else ""]
            for k, v in stages.items()]


def measure(source: str, workers: int, specs: dict, root: Path, args, full: bool) -> list:
    runs = {"ours": ours(specs[source], workers, args.batch, specs["folder"], full),
            "timm": timm_loader(source, root, workers, args.batch, full)}
    got: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            got[k].append(images_per_second(runs[k], args.batch, args.batches))
    a, b = statistics.median(got["ours"]), statistics.median(got["timm"])
    return [source, workers, f"{a:.1f}", f"{b:.1f}", f"{a / workers:.1f}", f"{b / workers:.1f}", f"{a / b:.2f}x"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None, help="JPEGs to make (default: an epoch of batches + 3)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--sources", default="folder,shards,hf")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    args.images = args.images or (args.batches + 3) * args.batch  # one epoch holds the skipped and timed batches
    torch.set_num_threads(1)  # the main process only collates and mixes; the workers take the cores
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        root = Path(tmp)
        specs = make_data(root, args.images)
        print(header(f"{os.cpu_count()} cores, {args.images} JPEGs, batch {args.batch}, {args.batches} batches "
                     f"timed, median of {args.rounds}"))
        columns = ["source", "workers", "ours img/s", "timm img/s", "ours per worker", "timm per worker",
                   "ours / timm"]
        tables = {}
        for full, title in ((False, "the loader: decoded, augmented, collated uint8 batches"),
                            (True, "to the model's input: + normalisation, Mixup/CutMix, random erasing")):
            print(f"\n{title}")
            tables[title] = rows = []
            for source in args.sources.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    rows.append(measure(source, workers, specs, root, args, full))
                    print(table(columns, rows[-1:]).splitlines()[-1], flush=True)
        for title, rows in tables.items():
            print(f"\n{title}\n\n{table(columns, rows)}")
        if args.profile:
            print()
            print(table(["stage (one worker, per image)", "ms", "share"], profile(root)))


if __name__ == "__main__":
    main()
