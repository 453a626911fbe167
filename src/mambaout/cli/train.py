"""``mambaout train``: its flags are generated from ``TrainConfig`` (see :mod:`mambaout.cli.flags`)."""
from __future__ import annotations

import argparse
import os

from .argtypes import model_name
from .common import CliError
from .flags import add_config_flags, config_from_flags
from .share import _check_repo_id, add_hub_flags, push_after_training, warn_without_token


def _config_class():
    from ..classify.config import TrainConfig

    return TrainConfig


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description}. The defaults shown are TrainConfig's; settings then come from the recipe "
                     "(--recipe; without it 'finetune' when --pretrained or --checkpoint meets fewer than 100,000 "
                     "training images, else the paper model's own: the official run's drop path, global batch "
                     "4096, per-epoch schedule with 10 cool-down epochs, random interpolation and seed 42), then "
                     "from the flags given. --print-config shows the result.")
    add_config_flags(p, _config_class(), types={"model": model_name})
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="when training ends, push the best checkpoint to this Hugging Face hub repository (ORG/NAME) "
                        "in timm's layout with a model card, as 'mambaout push-to-hub' does; a failed push leaves "
                        "the run as it is")
    add_hub_flags(p, prefix="hub-")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--print-schedule", action="store_true",
                   help="print the learning rate at the start of every epoch as CSV (epoch,lr) and exit; a per-step "
                        "schedule (--sched step) needs --data-dir or --train-data for its steps per epoch")


def recipe_choice(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(the recipe the flags leave to choose, why); (None, None) when ``--recipe`` names one."""
    from ..classify.config import choose_recipe

    if args.recipe:
        return None, None
    return choose_recipe({k: v for k, v in vars(args).items() if v is not None})


def train_config(args: argparse.Namespace):
    """The resolved ``TrainConfig``; without ``--recipe``, the one ``choose_recipe`` picks: ``finetune`` for
    pretrained weights on a small dataset, else the packaged recipe named after the model (``--model``, else the
    default Tiny: the paper's, for the paper's variants)."""
    return _resolved(args, recipe_choice(args)[0])


def _resolved(args: argparse.Namespace, recipe: str | None):
    return config_from_flags(args, _config_class(), recipe=recipe)


def cmd_train(args) -> int:
    import yaml

    from ..models.zoo import is_model_name

    recipe, why = recipe_choice(args)  # once: with weights it counts the training images
    cfg = _resolved(args, recipe)
    if not is_model_name(cfg.model):  # a recipe's model: the flag's own is checked as it is parsed
        raise CliError(f"unknown model {cfg.model!r}; run 'mambaout list' for the names")
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if args.print_schedule:
        return _print_schedule(cfg)
    if why is not None and os.environ.get("RANK", "0") == "0":  # said once under torchrun
        print(f"recipe: {recipe or 'none (the defaults)'}, chosen for {why}; --recipe NAME picks another",
              flush=True)
    if not cfg.train_source():
        raise CliError("no training data: give --data-dir (an ImageFolder root with train/ and val/) or --train-data "
                       "(a folder, shard spec or hf:PATH) with --val-data")
    if args.push_to_hub:
        _check_repo_id(args.push_to_hub)
        warn_without_token(args.push_to_hub)
    from ..classify.train import train

    summary = train(cfg)
    if summary:
        print(f"done: best top-1 {summary['best_top1']:.2f}%; checkpoints in {cfg.output} (best.pt, last.pt)")
    if args.push_to_hub:
        return push_after_training(cfg.output, args.push_to_hub, args.hub_private, args.hub_revision)
    return 0


def _print_schedule(cfg) -> int:
    """``epoch,lr`` for this process count (``WORLD_SIZE`` under torchrun, else one)."""
    import os

    from ..classify.schedule import schedule_rows

    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = None
    if cfg.sched == "step" and cfg.train_source():
        from ..data.sources import open_data
        from ..engine.optim import accumulation_steps, steps_per_epoch

        dataset, _ = open_data(cfg.train_source(), "train", image_column=cfg.image_column,
                               label_column=cfg.label_column)
        steps = steps_per_epoch(len(dataset), cfg, world, accumulation_steps(cfg, world))
    print("epoch,lr")
    for epoch, lr in schedule_rows(cfg, world, steps):
        print(f"{epoch},{lr:.6g}")
    return 0
