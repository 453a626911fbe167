"""argparse value types shared by every subcommand: each rejects a bad value with one clear message."""
from __future__ import annotations

import argparse


def _whole(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1, "a positive whole number")


def non_negative_int(text: str) -> int:
    return _whole(text, 0, "a whole number >= 0")


def model_name(text: str) -> str:
    """A registered model name, or ``name.tag`` naming one of its pretrained tags (``mambaout list --pretrained``)."""
    from ..models.zoo import VARIANTS, resolve_weights

    if "." in text and text.partition(".")[0] in VARIANTS:
        try:
            resolve_weights(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    if text not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; run 'mambaout list' for the names")
    return text


def model_names(text: str) -> list[str]:
    """A comma-separated list of model names (architectures: no pretrained tags)."""
    from ..models.zoo import VARIANTS

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more model names separated by commas")
    for n in names:
        if n not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown model {n!r}; run 'mambaout list' for the names")
    return names


def add_weights_options(parser: argparse.ArgumentParser, checkpoint_help: str = "a checkpoint file (any layout)"):
    """``--model`` plus exactly one of ``--pretrained`` / ``--checkpoint``, as every inference command takes."""
    parser.add_argument("--model", type=model_name, default=None,
                        help="model name (optional with a checkpoint written by 'mambaout train')")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", action="store_true", help="the published ImageNet weights")
    src.add_argument("--checkpoint", help=checkpoint_help)
