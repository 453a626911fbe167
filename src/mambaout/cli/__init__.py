"""The ``mambaout`` command line: ``main``, the parser, and the registry of subcommands.

One module per command group holds each command's ``add_*_args`` (its flags) and ``cmd_*`` (its handler):
:mod:`.models` (list, info, env), :mod:`.train`, :mod:`.infer` (eval, predict, cam, demo, export, bench),
:mod:`.share` (push-to-hub), :mod:`.lab`
(analyze, compare, erf), :mod:`.dense` (detect, segment) and :mod:`.data` (prepare-digits, prepare-shapes,
prepare-shards). Handlers
import torch and the rest of the library only when they run, so ``mambaout --help`` stays quick.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from . import data, dense, infer, lab, models, share, train
from .common import DEBUG_HELP, EXIT_USAGE, CliError, _Parser, add_debug, user_message

# name -> (parser builder, handler, one-line help), in the order ``mambaout --help`` lists them
COMMANDS = {
    "list": (models.add_list_args, models.cmd_list, "list the models: params, GMACs, reported top-1, weights"),
    "info": (models.add_info_args, models.cmd_info,
             "one model: params, GMACs at a size, feature maps, preprocessing"),
    "env": (models.add_env_args, models.cmd_env, "versions and hardware, for bug reports"),
    "train": (train.add_train_args, train.cmd_train,
              "train or fine-tune on an ImageFolder tree, shards or a Hugging Face dataset (torchrun for many "
              "processes)"),
    "eval": (infer.add_eval_args, infer.cmd_eval,
             "top-1 / top-5 / loss / images/s of weights on an ImageFolder split, shards or an hf: dataset"),
    "predict": (infer.add_predict_args, infer.cmd_predict,
                "top-k labels for image files and folders (table or JSON lines)"),
    "cam": (infer.add_cam_args, infer.cmd_cam,
            "class activation maps (Grad-CAM, Grad-CAM++, EigenCAM, ...) of images: overlays and top classes"),
    "demo": (infer.add_demo_args, infer.cmd_demo,
             "a Gradio web demo (upload or paste an image; API endpoint /predict)"),
    "export": (infer.add_export_args, infer.cmd_export,
               "export to safetensors, ONNX, TorchScript, OpenVINO or a hub folder (--format hf), with a parity "
               "check against PyTorch"),
    "push-to-hub": (share.add_push_args, share.cmd_push,
                    "share a checkpoint or run on the Hugging Face hub in timm's layout, with a model card"),
    "bench": (infer.add_bench_args, infer.cmd_bench, "images/s, latency, memory, params and GMACs of models"),
    "analyze": (lab.add_analyze_args, lab.cmd_analyze,
                "the paper's long-sequence test: tokens, Eq. 6 FLOPs, r_L = L/(6D) per task and stage"),
    "compare": (lab.add_compare_args, lab.cmd_compare,
                "train token mixers (conv, ssm, attention) in one skeleton on the same data; table and plot"),
    "erf": (lab.add_erf_args, lab.cmd_erf,
            "effective receptive fields of models' stages, side by side (RepLKNet's method and area ratios)"),
    "detect": (dense.add_detect_args, dense.cmd_detect,
               "COCO Mask R-CNN + FPN on a MambaOut backbone: train, eval (box/mask AP), predict"),
    "segment": (dense.add_segment_args, dense.cmd_segment,
                "ADE20K UperNet on a MambaOut backbone: train, eval (mIoU), predict"),
    "prepare-shapes": (data.add_prepare_shapes_args, data.cmd_prepare_shapes,
                       "write a generated shapes dataset in the COCO or ADE20K layout (dense quickstart data)"),
    "prepare-digits": (data.add_prepare_digits_args, data.cmd_prepare_digits,
                       "write scikit-learn's handwritten digits as an ImageFolder tree, shards or a Hugging Face "
                       "dataset (quickstart data)"),
    "prepare-shards": (data.add_prepare_shards_args, data.cmd_prepare_shards,
                       "write an ImageFolder tree, shards or a Hugging Face dataset as shuffled WebDataset shards"),
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="mambaout", description="MambaOut vision models: zoo, training, inference.")
    parser.add_argument("--version", action="version", version=f"mambaout {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (add, handler, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_debug(p)
        add(p)
        p.set_defaults(func=handler)
    return parser


def _run(args) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("mambaout: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # one line for the user; the traceback on request
        if isinstance(getattr(e, "exit_code", None), int):  # a requested stop (SIGINT/SIGTERM), checkpoint written
            print(f"mambaout {args.command}: {e}", file=sys.stderr)
            return e.exit_code
        if args.debug:
            traceback.print_exc()
        message, code = user_message(e)
        print(f"mambaout {args.command}: {message}", file=sys.stderr)
        return code


def _one_line(message, category, *args, **kwargs) -> str:
    """Warnings as the errors are: one line naming the problem, not Python's file:line and source line."""
    return f"mambaout: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    previous, warnings.formatwarning = warnings.formatwarning, _one_line
    try:
        return _run(args)
    finally:
        warnings.formatwarning = previous


__all__ = ["COMMANDS", "EXIT_USAGE", "CliError", "build_parser", "main"]
