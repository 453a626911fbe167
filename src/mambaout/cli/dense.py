"""``mambaout detect train|eval|predict`` and ``mambaout segment train|eval|predict``.

Training flags mirror ``mambaout train``'s; every setting also has a recipe key (``--print-config`` shows them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .argtypes import model_name, non_negative_int, positive_int

# (flag, type, help) shared by both tasks' ``train``; the dest is the config field of the same name.
_COMMON_TRAIN = [
    ("--model", model_name, "backbone: a MambaOut variant, e.g. mambaout_tiny or a lab mixer like "
                            "mambaout_femto_ssm (default mambaout_tiny)"),
    ("--data-dir", str, "dataset root (see the layout above)"),
    ("--output", str, "folder for checkpoints (best.pt, last.pt), logs, metrics and curves.png"),
    ("--recipe", str, "packaged recipe name or YAML path (e.g. detect_quickstart, segment_quickstart)"),
    ("--batch-size", positive_int, "images per process per micro-batch (default 2)"),
    ("--global-batch-size", positive_int, "images per optimiser step over all processes (default 16, the "
                                          "paper's; sets accumulation)"),
    ("--lr", float, "peak AdamW learning rate (default 1e-4)"),
    ("--weight-decay", float, "AdamW weight decay, never on norms and biases"),
    ("--warmup-iters", non_negative_int, "linear warm-up iterations"),
    ("--drop-path", float, "backbone stochastic depth (default 0.3 Tiny/Small, 0.6 Base)"),
    ("--frozen-stages", int, "freeze the stem and stages 0..N of the backbone (-1: none)"),
    ("--num-classes", positive_int, "number of classes (default: the dataset's)"),
    ("--checkpoint", str, "initial weights: ImageNet backbone weights in any layout, or a detector/segmenter "
                          "checkpoint of this package to fine-tune"),
    ("--resume", str, "continue an interrupted run from its last.pt"),
    ("--amp", str, "mixed precision: auto (fp16 on CUDA, none on CPU), none, bf16, fp16"),
    ("--clip-grad", float, "clip the gradient norm to this value"),
    ("--workers", non_negative_int, "data loading processes per training process"),
    ("--seed", int, "random seed"),
    ("--device", str, "auto, cpu or cuda"),
    ("--eval-interval", positive_int, "iterations between evaluations and checkpoints (default: one epoch "
                                      "for detect, 16000 for segment)"),
    ("--stop-after", positive_int, "end after this many iterations of this invocation (continue with --resume)"),
    ("--log-interval", positive_int, "iterations between log lines when output is not a terminal"),
    ("--nonfinite", str, "on a NaN/inf loss: stop (default; the last good checkpoint is kept) or skip the step "
                         "and count it"),
]
_TASK_TRAIN = {
    "detect": [
        ("--epochs", positive_int, "training epochs (default 12: the 1x schedule)"),
        ("--min-size", positive_int, "shorter image side (default 800)"),
        ("--max-size", positive_int, "longer image side at most (default 1333)"),
        ("--train-split", str, "training split: annotations/instances_SPLIT.json + SPLIT/ (default train2017)"),
        ("--val-split", str, "validation split (default val2017)"),
    ],
    "segment": [
        ("--iters", positive_int, "training iterations (default 160000)"),
        ("--crop-size", positive_int, "training crop side (default 512)"),
        ("--eval-mode", str, "inference: slide (crop windows, default) or whole"),
    ],
}
_SWITCHES = [
    ("--pretrained", "start the backbone from the published ImageNet weights"),
    ("--grad-checkpointing", "recompute backbone activations in the backward pass to save memory"),
    ("--strict-data", "fail on the first unreadable image instead of skipping it with a warning"),
]
NOUN = {"detect": "detector", "segment": "segmenter"}
LAYOUT = {
    "detect": "COCO layout: DATA/annotations/instances_{split}.json + DATA/{split}/<images>",
    "segment": "ADE20K layout: DATA/images/{training,validation}/*.jpg + DATA/annotations/{training,validation}/"
               "*.png (label 0 ignored, 1..N the classes; optional DATA/classes.txt names them)",
}


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def add_task_args(p: argparse.ArgumentParser, task: str) -> None:
    from . import _Parser

    p.description = f"{p.description}. {LAYOUT[task]}."
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    train = sub.add_parser("train", help=f"train a {NOUN[task]} (torchrun for many processes)",
                           description=f"Train. {LAYOUT[task]}.")
    for flag, kind, help_text in _COMMON_TRAIN + _TASK_TRAIN[task]:
        train.add_argument(flag, type=kind, default=None, help=help_text)
    for flag, help_text in _SWITCHES:
        train.add_argument(flag, action="store_true", default=None, help=help_text)
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")

    ev = sub.add_parser("eval", help="evaluate a trained checkpoint on the validation split",
                        description=f"Evaluate. {LAYOUT[task]}.")
    ev.add_argument("--checkpoint", required=True, help=f"a checkpoint written by 'mambaout {task} train'")
    ev.add_argument("--data-dir", required=True, help="dataset root")
    ev.add_argument("--output", help="also write the metrics to this JSON file")
    ev.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ev.add_argument("--workers", type=non_negative_int, default=2)
    if task == "detect":
        ev.add_argument("--split", default=None, help="split to evaluate (default: the training run's val split)")
        ev.add_argument("--min-size", type=positive_int, default=None, help="shorter side (default: as trained)")
        ev.add_argument("--max-size", type=positive_int, default=None, help="longer side at most")
        ev.add_argument("--batch-size", type=positive_int, default=2)
    else:
        ev.add_argument("--multi-scale", action="store_true",
                        help="average over scales 0.5-1.75 with horizontal flips (the paper's MS mIoU)")
        ev.add_argument("--eval-mode", choices=("whole", "slide"), default=None, help="default: as trained")

    pr = sub.add_parser("predict", help="draw predictions on image files",
                        description="Write each input image with its predictions drawn on it.")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (recursive)")
    pr.add_argument("--checkpoint", required=True, help=f"a checkpoint written by 'mambaout {task} train'")
    pr.add_argument("--output", default=f"runs/{task}-predict", help="folder for the drawn images and "
                                                                      "predictions.jsonl")
    pr.add_argument("--device", default="cpu", help="torch device (default cpu)")
    for action in (train, ev, pr):
        # SUPPRESS: a --debug given before the action (on the task's parser) must survive the action's defaults.
        action.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the full traceback when something fails")
    if task == "detect":
        pr.add_argument("--score-threshold", type=float, default=0.5, help="draw detections above this score")
    else:
        pr.add_argument("--alpha", type=float, default=0.5, help="opacity of the label colours (default 0.5)")


def _train_config(args, task: str):
    from ..dense.config import CONFIGS
    from ..engine.config import resolve_config

    flags = _COMMON_TRAIN + _TASK_TRAIN[task]
    overrides = {_dest(f): getattr(args, _dest(f)) for f, *_ in flags + _SWITCHES}
    return resolve_config(overrides, cls=CONFIGS[task])


def _cmd_train(args, task: str) -> int:
    import yaml

    from ..dense.engine import train_dense
    from . import CliError

    cfg = _train_config(args, task)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if not cfg.data_dir:
        raise CliError(f"--data-dir is required ({LAYOUT[task]})")
    summary = train_dense(cfg)
    if summary:
        key = "bbox AP" if task == "detect" else "mIoU"
        print(f"done: best {key} {summary['best']:.4f}; checkpoints in {cfg.output} (best.pt, last.pt)")
    return 0


def _cmd_eval(args, task: str) -> int:
    from ..dense.tasks import load_dense
    from ..engine import distributed as D

    info = D.setup(args.device)
    try:
        overrides = {"data_dir": args.data_dir, "workers": args.workers}
        if task == "detect":
            overrides.update(min_size=args.min_size, max_size=args.max_size, val_split=args.split,
                             eval_batch_size=args.batch_size)
        else:
            overrides.update(eval_mode=args.eval_mode)
        t = load_dense(args.checkpoint, task, info.device, overrides)
        t.val_set = t.val_dataset()
        if task == "segment" and args.multi_scale:
            scores = t.evaluate(t.model, info, args.amp, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True)
        else:
            scores = t.evaluate(t.model, info, args.amp)
    finally:
        D.cleanup()
    if info.is_main:
        print(f"{args.checkpoint}: {t.describe(scores)} ({len(t.val_set)} images)")
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


def _cmd_predict(args, task: str) -> int:
    from ..dense.predict import predict_files
    from ..infer.predict import expand_inputs
    from . import CliError

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:  # a mistyped argument, not a bad file among good ones: say so before loading any model
        raise CliError(f"not found: {', '.join(missing)}")
    paths = expand_inputs(args.inputs)
    if not paths:
        raise CliError(f"no image files found in {' '.join(args.inputs)}")
    option = args.score_threshold if task == "detect" else args.alpha
    failed = 0
    for res in predict_files(task, args.checkpoint, paths, args.output, device=args.device, option=option):
        failed += "error" in res
        if "error" in res:
            print(f"{res['path']}: error: {res['error']}", flush=True)
        else:
            print(f"{res['path']} -> {res['drawn']}  ({res['summary']})", flush=True)
    print(f"predictions written to {Path(args.output) / 'predictions.jsonl'}")
    if failed:
        print(f"mambaout {task} predict: {failed} of {len(paths)} file(s) failed", file=sys.stderr)
        return 1
    return 0


def _handler(task: str):
    def run(args) -> int:
        return {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict}[args.action](args, task)

    return run


def add_detect_args(p: argparse.ArgumentParser) -> None:
    add_task_args(p, "detect")


def add_segment_args(p: argparse.ArgumentParser) -> None:
    add_task_args(p, "segment")


cmd_detect = _handler("detect")
cmd_segment = _handler("segment")
