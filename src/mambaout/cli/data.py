"""``mambaout prepare-digits`` and ``prepare-shapes``: small datasets to try training on."""
from __future__ import annotations

import argparse

from .argtypes import positive_int


# ------------------------------------------------------------------------------------------- prepare-digits
def add_prepare_digits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="folder to write train/<digit>/*.png and val/<digit>/*.png into")
    p.add_argument("--size", type=positive_int, default=32, help="image side in pixels (default 32)")


def cmd_prepare_digits(args) -> int:
    from ..data.digits import export_digits

    counts = export_digits(args.output, size=args.size)
    print(f"wrote {counts['train']} train and {counts['val']} val images of scikit-learn's digits to {args.output}")
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
