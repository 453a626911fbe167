"""``mambaout detect train|eval|predict`` and ``mambaout segment train|eval|predict``.

The training flags are generated from ``DetectConfig`` / ``SegmentConfig`` (see :mod:`mambaout.cli.flags`);
every setting also has a recipe key (``--print-config`` shows them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .argtypes import model_name, non_negative_int, positive_int
from .common import CliError, _Parser, add_debug
from .flags import add_config_flags, config_from_flags

NOUN = {"detect": "detector", "segment": "segmenter"}
LAYOUT = {
    "detect": "COCO layout: DATA/annotations/instances_{split}.json + DATA/{split}/<images>",
    "segment": "ADE20K layout: DATA/images/{training,validation}/*.jpg + DATA/annotations/{training,validation}/"
               "*.png (label 0 ignored, 1..N the classes; optional DATA/classes.txt names them)",
}


def _config_class(task: str):
    from ..dense.config import CONFIGS

    return CONFIGS[task]


def _add_train(sub, task: str) -> argparse.ArgumentParser:
    train = sub.add_parser("train", help=f"train a {NOUN[task]} (torchrun for many processes)",
                           description=f"Train. {LAYOUT[task]}.")
    add_config_flags(train, _config_class(task), types={"model": model_name})
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    train.add_argument("--print-schedule", action="store_true",
                       help="print the learning rate every 100 iterations and at the schedule's turns as CSV "
                            "(iteration,lr) and exit" + (" (needs --data-dir: iterations per epoch)"
                                                         if task == "detect" else ""))
    return train


def _add_eval(sub, task: str) -> argparse.ArgumentParser:
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
    return ev


def _add_predict(sub, task: str) -> argparse.ArgumentParser:
    pr = sub.add_parser("predict", help="draw predictions on image files",
                        description="Write each input image with its predictions drawn on it.")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (recursive)")
    pr.add_argument("--checkpoint", required=True, help=f"a checkpoint written by 'mambaout {task} train'")
    pr.add_argument("--output", default=f"runs/{task}-predict", help="folder for the drawn images and "
                                                                      "predictions.jsonl")
    pr.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return pr


def add_task_args(p: argparse.ArgumentParser, task: str) -> None:
    p.description = f"{p.description}. {LAYOUT[task]}."
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    actions = [_add_train(sub, task), _add_eval(sub, task), _add_predict(sub, task)]
    for action in actions:
        add_debug(action)
    if task == "detect":
        actions[2].add_argument("--score-threshold", type=float, default=0.5,
                                help="draw detections above this score")
    else:
        actions[2].add_argument("--alpha", type=float, default=0.5,
                                help="opacity of the label colours (default 0.5)")


def _cmd_train(args, task: str) -> int:
    import yaml

    from ..dense.train import train_dense

    cfg = config_from_flags(args, _config_class(task))
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if args.print_schedule:
        return _print_schedule(cfg, task)
    if not cfg.data_dir:
        raise CliError(f"--data-dir is required ({LAYOUT[task]})")
    summary = train_dense(cfg)
    if summary:
        key = "bbox AP" if task == "detect" else "mIoU"
        print(f"done: best {key} {summary['best']:.4f}; checkpoints in {cfg.output} (best.pt, last.pt)")
    return 0


def _print_schedule(cfg, task: str) -> int:
    """``iteration,lr`` for this process count (``WORLD_SIZE`` under torchrun, else one)."""
    import os

    from ..dense.train import schedule_rows
    from ..engine.optim import accumulation_steps, steps_per_epoch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    ipe = None
    if task == "detect":
        if not cfg.data_dir:
            raise CliError("detect train --print-schedule needs --data-dir: the schedule counts epochs of it")
        from ..dense.coco import CocoDetection

        n = len(CocoDetection(Path(cfg.data_dir), cfg.train_split, train=True))
        ipe = steps_per_epoch(n, cfg, world, accumulation_steps(cfg, world))
    print("iteration,lr")
    for it, lr in schedule_rows(cfg, ipe):
        print(f"{it},{lr:.6g}")
    return 0


def _evaluate(args, task: str, info):
    from ..dense.tasks import load_dense

    overrides = {"data_dir": args.data_dir, "workers": args.workers}
    if task == "detect":
        overrides.update(min_size=args.min_size, max_size=args.max_size, val_split=args.split,
                         eval_batch_size=args.batch_size)
    else:
        overrides.update(eval_mode=args.eval_mode)
    t = load_dense(args.checkpoint, task, info.device, overrides)
    t.val_set = t.val_dataset()
    if task == "segment" and args.multi_scale:
        return t, t.evaluate(t.model, info, args.amp, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True)
    return t, t.evaluate(t.model, info, args.amp)


def _cmd_eval(args, task: str) -> int:
    from ..engine import distributed as D

    info = D.setup(args.device)
    try:
        t, scores = _evaluate(args, task, info)
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
    from .infer import check_inputs_exist, image_files

    check_inputs_exist(args.inputs)
    paths = image_files(args.inputs)
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
