"""``mambaout train``: its flags are generated from ``TrainConfig`` (see :mod:`mambaout.cli.flags`)."""
from __future__ import annotations

import argparse

from .argtypes import model_name
from .common import CliError
from .flags import add_config_flags, config_from_flags


def _config_class():
    from ..classify.config import TrainConfig

    return TrainConfig


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_config_flags(p, _config_class(), types={"model": model_name})
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def train_config(args: argparse.Namespace):
    """The resolved ``TrainConfig``; without ``--recipe``, the packaged recipe named after ``--model`` (the
    paper's, for the paper's variants) is the base."""
    from ..classify.config import list_recipes

    recipe = args.model if args.recipe is None and args.model in list_recipes() else None
    return config_from_flags(args, _config_class(), recipe=recipe)


def cmd_train(args) -> int:
    import yaml

    from ..models.zoo import VARIANTS

    cfg = train_config(args)
    if cfg.model not in VARIANTS:  # a recipe's model: the flag's own is checked as it is parsed
        raise CliError(f"unknown model {cfg.model!r}; run 'mambaout list' for the names")
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if not cfg.data_dir:
        raise CliError("--data-dir is required (an ImageFolder root with train/ and val/)")
    from ..classify.train import train

    summary = train(cfg)
    if summary:
        print(f"done: best top-1 {summary['best_top1']:.2f}%; checkpoints in {cfg.output} (best.pt, last.pt)")
    return 0
