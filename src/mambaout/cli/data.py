"""``mambaout prepare-digits``, ``prepare-shapes`` and ``prepare-shards``: small datasets to try training on, and
any classification data as WebDataset shards."""
from __future__ import annotations

import argparse

from .argtypes import positive_int


# ------------------------------------------------------------------------------------------- prepare-digits
def add_prepare_digits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="folder to write the digits into")
    p.add_argument("--size", type=positive_int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--format", choices=("folder", "shards", "hf"), default="folder",
                   help="folder: train/<digit>/*.png and val/<digit>/*.png (default); shards: WebDataset shards "
                        "train-*.tar and val-*.tar with classes.txt and _info.json (train with --train-data "
                        "'OUTPUT/train-*.tar' --val-data 'OUTPUT/val-*.tar'); hf: a Hugging Face DatasetDict saved "
                        "with save_to_disk (train with --train-data hf:OUTPUT)")
    p.add_argument("--classes", type=_digit_list, default=None, metavar="LIST",
                   help="only these digits, e.g. 0-4 or 5,6,7 (a transfer experiment: pretrain on some, fine-tune "
                        "on the others)")
    p.add_argument("--train-per-class", type=positive_int, default=None, metavar="N",
                   help="only N training images per digit (a few-shot split; validation keeps all)")
    p.add_argument("--shard-size", default="256", help="with --format shards: images per shard, or a size such as "
                                                       "50MB (default 256)")


def _digit_list(text: str) -> list[int]:
    """``0-4`` or ``5,6,7``: the digits to keep."""
    try:
        out = sorted({d for part in text.split(",") for d in (range(int(part.split("-")[0]),
                                                                    int(part.split("-")[-1]) + 1))})
    except ValueError:
        out = []
    if not out or not all(0 <= d <= 9 for d in out):
        raise argparse.ArgumentTypeError(f"expected digits 0-9 as a range or a list (0-4, 5,6,7), got {text!r}")
    return out


def cmd_prepare_digits(args) -> int:
    import tempfile

    from ..data.digits import export_digits

    subset = {"classes": args.classes, "train_per_class": args.train_per_class}
    if args.format == "folder":
        counts = export_digits(args.output, size=args.size, **subset)
        print(f"wrote {counts['train']} train and {counts['val']} val images of scikit-learn's digits to "
              f"{args.output}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mambaout-digits-") as tmp:
        counts = export_digits(tmp, size=args.size, **subset)
        if args.format == "shards":
            from ..data.convert import write_shards

            info = write_shards(tmp, args.output, shard_size=args.shard_size, progress=False,
                                source_name=f"scikit-learn's digits at {args.size}x{args.size}")
            shards = sum(len(s["filenames"]) for s in info["splits"].values())
            what = f"as {shards} WebDataset shards"
        else:
            from ..data.digits import save_hf_dataset

            save_hf_dataset(tmp, args.output)
            what = "as a Hugging Face dataset"
    print(f"wrote {counts['train']} train and {counts['val']} val images of scikit-learn's digits {what} to "
          f"{args.output}")
    return 0


# ------------------------------------------------------------------------------------------- prepare-shards
def add_prepare_shards_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="what to convert: a data root with train/ and val/ (both splits are written), an "
                               "ImageFolder directory, a shard spec, or hf:PATH (a saved dataset: its train and "
                               "validation splits)")
    p.add_argument("out", help="folder for {split}-000000.tar ..., classes.txt and _info.json")
    p.add_argument("--shard-size", default="1000",
                   help="images per shard (1000), or bytes per shard with a unit (200MB, 1GB) (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    p.add_argument("--split", default=None, help="name of a single source's shards, {split}-000000.tar (default: "
                                                "val for a folder named val or validation, else train)")
    p.add_argument("--image-column", default=None, help="the image column of an hf: source")
    p.add_argument("--label-column", default=None, help="the label column of an hf: source")
    p.add_argument("--strict-data", action="store_true",
                   help="stop at the first unreadable image instead of leaving it out with a warning")


def cmd_prepare_shards(args) -> int:
    from ..data.convert import write_shards

    info = write_shards(args.src, args.out, shard_size=args.shard_size, seed=args.seed, strict=args.strict_data,
                        image_column=args.image_column, label_column=args.label_column, split=args.split)
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} images in {len(split['filenames'])} shard(s), "
              f"{args.out}/{name}-{{000000..{len(split['filenames']) - 1:06d}}}.tar")
    if info["skipped"]:
        print(f"left out {len(info['skipped'])} unreadable image(s), e.g. {info['skipped'][0]}")
    print(f"{len(info['classes'])} classes in {args.out}/classes.txt; index in {args.out}/_info.json")
    return 0


# ------------------------------------------------------------------------------------------- prepare-shapes
def add_prepare_shapes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="dataset root to write")
    p.add_argument("--layout", choices=("coco", "ade20k"), required=True,
                   help="coco: annotations/instances_{train,val}2017.json + images; ade20k: images/ + annotations/")
    p.add_argument("--train", type=positive_int, default=200, help="training images (default 200)")
    p.add_argument("--val", type=positive_int, default=50, help="validation images (default 50)")
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)


def cmd_prepare_shapes(args) -> int:
    from ..dense.shapes import make_shapes

    make_shapes(args.output, args.layout, n_train=args.train, n_val=args.val, size=(args.size, args.size),
                seed=args.seed)
    print(f"wrote {args.train} train and {args.val} val images of generated shapes ({args.layout} layout) "
          f"to {args.output}")
    return 0
