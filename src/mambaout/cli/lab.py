"""``mambaout analyze`` and ``compare``: the paper's two questions, asked of any model or data."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .argtypes import model_name, model_names, positive_int


# -------------------------------------------------------------------------------------------------- analyze
def add_analyze_args(parser: argparse.ArgumentParser) -> None:
    from ..lab.analysis import DEFAULT_MODEL, TASKS

    parser.add_argument("--img-size", type=positive_int, nargs="+", metavar=("H", "W"), default=None,
                        help="image height and width, or one side for a square (default 224, or the task's)")
    parser.add_argument("--patch-size", type=positive_int, default=16, help="ViT patch size (default 16)")
    parser.add_argument("--dim", type=positive_int, default=None,
                        help="another block width D to analyse beside ViT-S (384) and ViT-B (768)")
    parser.add_argument("--task", choices=tuple(TASKS), default=None,
                        help="preset image size: imagenet 224×224, coco 800×1280, ade20k 512×2048")
    parser.add_argument("--model", type=model_name, default=DEFAULT_MODEL,
                        help=f"model whose stages to analyse (default {DEFAULT_MODEL})")
    parser.add_argument("--plot", metavar="FILE.png", default=None, help="also write r_L against image size as PNG")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def _analyze_size(args: argparse.Namespace) -> tuple[int, int] | None:
    size = args.img_size
    if size is not None and len(size) > 2:
        raise ValueError(f"--img-size takes H W or one side, got {len(size)} numbers")
    if size is not None and args.task is not None:
        raise ValueError("give --img-size or --task, not both")
    if args.plot and Path(args.plot).is_dir():
        raise ValueError(f"--plot {args.plot} is a folder; give the path of the PNG file to write")
    return (size[0], size[-1]) if size is not None else None


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..lab.analysis import VIT_SIZES, analyze, format_report, plot_ratio

    size = _analyze_size(args)
    result = analyze(img_size=size or 224, patch_size=args.patch_size, dim=args.dim, task=args.task,
                     model=args.model)
    if args.plot:
        h, w = result["img_size"]
        dims = sorted({*VIT_SIZES.values(), *([args.dim] if args.dim else [])})
        result["plot"] = str(plot_ratio(args.plot, model=args.model, patch_size=args.patch_size, dims=dims,
                                        mark=(h, w)))
    print(json.dumps(result) if args.json else format_report(result))
    return 0


# -------------------------------------------------------------------------------------------------- compare
def add_compare_args(p: argparse.ArgumentParser) -> None:
    from ..lab.compare import DEFAULT_MODELS, SEGMENT_ITERS, SEGMENT_MODELS, SEGMENT_SIZE

    p.add_argument("--task", choices=("classify", "segment"), default="classify",
                   help="classify (default): image classification on --data-dir or the digits; segment: UperNet "
                        "on two generated segmentation tasks, local and long-range (Hypothesis 2)")
    p.add_argument("--models", type=model_names, default=None, metavar="NAME[,NAME...]",
                   help=f"models to train (default: {','.join(DEFAULT_MODELS)}; with --task segment: "
                        f"{','.join(SEGMENT_MODELS)})")
    p.add_argument("--iters", type=positive_int, default=None,
                   help=f"--task segment: training iterations per model and task (default {SEGMENT_ITERS})")
    p.add_argument("--segment-tasks", default="local,long_range", metavar="TASK[,TASK]",
                   help="--task segment: which generated tasks (default local,long_range)")
    p.add_argument("--train-images", type=positive_int, default=400,
                   help="--task segment: generated training images per task (default 400; 100 for validation)")
    p.add_argument("--segment-size", type=positive_int, default=SEGMENT_SIZE,
                   help=f"--task segment: image side (default {SEGMENT_SIZE}: stage 0-1 token counts above 6D)")
    p.add_argument("--data-dir", default=None,
                   help="ImageFolder root with train/ and val/ (default: scikit-learn's digits, exported into "
                        "OUTPUT/data)")
    p.add_argument("--train-data", default=None, help="training data instead of --data-dir: an ImageFolder "
                   "directory, a WebDataset shard spec (brace notation or glob) or hf:PATH")
    p.add_argument("--val-data", default=None, help="validation data, in any of --train-data's forms (default: "
                   "DATA_DIR/val, or the validation split of an hf: --train-data)")
    p.add_argument("--image-column", default=None, help="the image column of an hf: dataset")
    p.add_argument("--label-column", default=None, help="the label column of an hf: dataset")
    p.add_argument("--output", default="runs/compare", help="results folder (default runs/compare)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per model (default: the recipe's)")
    p.add_argument("--recipe", default="quickstart",
                   help="recipe shared by every model (default quickstart; segment_quickstart with --task segment)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=None, help="per-process batch (default: recipe's)")
    p.add_argument("--img-size", type=positive_int, default=None, help="resolution (default: recipe's)")


def _compare_segment(args) -> int:
    from ..lab.compare import SEGMENT_ITERS, SEGMENT_MODELS, compare_segment, segment_markdown
    from ..lab.seg_tasks import KINDS

    ignored = [flag for flag, value in (("--data-dir", args.data_dir), ("--train-data", args.train_data),
                                        ("--val-data", args.val_data), ("--epochs", args.epochs)) if value]
    if ignored:
        raise ValueError(f"{', '.join(ignored)}: not used with --task segment (it writes its own data; "
                         "--iters sets the length)")
    tasks = tuple(t.strip() for t in args.segment_tasks.split(",") if t.strip())
    bad = [t for t in tasks if t not in KINDS]
    if bad or not tasks:
        raise ValueError(f"--segment-tasks {args.segment_tasks!r}: choose from {', '.join(KINDS)}")
    iters = args.iters or SEGMENT_ITERS
    given = {"batch_size": args.batch_size, "global_batch_size": args.batch_size,
             "eval_interval": max(1, iters // 4)}
    rows = compare_segment(args.models or SEGMENT_MODELS, args.output, tasks=tasks, iters=iters, seed=args.seed,
                           size=args.segment_size, n_train=args.train_images, n_val=max(1, args.train_images // 4),
                           recipe=args.recipe if args.recipe != "quickstart" else "segment_quickstart",
                           overrides={k: v for k, v in given.items() if v is not None})
    print(segment_markdown(rows), end="")
    print(f"table and plot written to {args.output}/compare.{{md,csv,json,png}}")
    return 0


def cmd_compare(args) -> int:
    from ..lab.compare import DEFAULT_MODELS, compare, markdown_table
    from ..utils.optional import require

    # Checked up front: the plot is drawn only after every model has trained, hours later on real data.
    require("matplotlib", why="the comparison plot")
    if args.task == "segment":
        return _compare_segment(args)
    args.models = args.models or DEFAULT_MODELS
    data_dir = args.data_dir
    if data_dir is None and args.train_data is None:
        require("sklearn", why="the default data (scikit-learn's digits)")
        from ..data.digits import export_digits

        data_dir = Path(args.output) / "data"
        if not (data_dir / "train").is_dir():
            export_digits(data_dir)
    given = {"batch_size": args.batch_size, "img_size": args.img_size, "train_data": args.train_data,
             "val_data": args.val_data, "image_column": args.image_column, "label_column": args.label_column}
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.epochs is not None and args.epochs < 2:
        overrides["warmup_epochs"] = 0
    rows = compare(args.models, data_dir or "", args.output, epochs=args.epochs, recipe=args.recipe, seed=args.seed,
                   overrides=overrides)
    print(markdown_table(rows), end="")
    print(f"table and plot written to {args.output}/compare.{{md,csv,json,png}}")
    return 0


# ------------------------------------------------------------------------------------------------------ erf
def add_erf_args(p: argparse.ArgumentParser) -> None:
    from ..lab.compare import DEFAULT_MODELS
    from ..lab.erf import DEFAULT_IMAGES

    p.add_argument("--models", type=model_names, default=None, metavar="NAME[,NAME...]",
                   help=f"models to measure, side by side (default: {','.join(DEFAULT_MODELS)}; with --checkpoint: "
                        "the models the checkpoints record)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", action="append", default=None, metavar="FILE",
                     help="weights of a model, one per model in --models order (repeatable, or FILE,FILE...): a "
                          "classifier in any layout, or a 'segment/detect train' checkpoint (its backbone is "
                          "measured); default: random initialisation")
    src.add_argument("--pretrained", action="store_true", help="every model with its published weights")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="folder of images (searched recursively; default: scikit-image's bundled photographs)")
    p.add_argument("--num-images", type=positive_int, default=DEFAULT_IMAGES,
                   help=f"images to average over (default {DEFAULT_IMAGES})")
    p.add_argument("--stage", type=int, default=-1,
                   help="stage whose central output position is traced (a block for a ViT; default -1: the last)")
    p.add_argument("--img-size", type=positive_int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per backward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--output", required=True, metavar="OUT",
                   help="folder for erf.png, erf_<model>.npy (the averaged map) and erf.json (area ratios)")


def _erf_sources(args) -> tuple[list, list]:
    checkpoints = [c.strip() for given in (args.checkpoint or []) for c in given.split(",") if c.strip()]
    for c in checkpoints:
        if not Path(c).is_file():
            raise ValueError(f"--checkpoint {c}: no such file")
    if checkpoints:
        models = args.models or [None] * len(checkpoints)
        if len(models) != len(checkpoints):
            raise ValueError(f"--models names {len(models)} models but --checkpoint gives {len(checkpoints)} files; "
                             "give one checkpoint per model, in the same order")
        return models, checkpoints
    from ..lab.compare import DEFAULT_MODELS

    models = args.models or DEFAULT_MODELS
    return models, [None] * len(models)


def cmd_erf(args) -> int:
    from ..lab.erf import analyze_erf
    from ..utils.optional import require

    require("matplotlib", why="the ERF plot")
    models, checkpoints = _erf_sources(args)
    if not (args.checkpoint or args.pretrained):
        print("weights: random initialisation (give --checkpoint or --pretrained to measure trained models)")
    result = analyze_erf(models, args.output, checkpoints=checkpoints, pretrained=args.pretrained,
                         images=args.images, num_images=args.num_images, stage=args.stage, img_size=args.img_size,
                         batch_size=args.batch_size, device=args.device)
    for label, r in result["models"].items():
        rf = r["theoretical_rf"]
        print(f"{label}: theoretical RF " + (f"{rf['size'][0]}×{rf['size'][1]} px ({rf['area_ratio']:.3f} of the "
                                              f"image)" if rf else "none (" + r["rf_note"] + ")"))
    print(f"maps, ratios and plot written to {args.output}/erf_<model>.npy, erf.json, erf.png")
    return 0
