"""The ``mambaout`` command line: one small parser builder and one handler per subcommand."""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from .argtypes import add_weights_options
from .argtypes import model_name as _model_name
from .argtypes import positive_int as _positive_int

EXIT_USAGE = 2


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------------------------------------------------- list
def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'mambaout_*_rw'")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")


def _cmd_list(args) -> int:
    from ..models import create_model, list_models
    from ..models.complexity import count_macs, count_params
    from ..models.zoo import VARIANTS

    rows = []
    for name in list_models(args.pattern):
        v = VARIANTS[name]
        model = create_model(name, device="meta")
        w = v.weights
        source = "official release" if w and w.url else ("hf: " + w.hf_hub_id if w and w.hf_hub_id else "none")
        rows.append({
            "model": name, "params": count_params(model), "gmacs": round(count_macs(model) / 1e9, 2),
            "top1_paper": v.top1_paper, "top1_timm": v.top1_timm, "weights": source,
        })
    if not rows:
        raise CliError(f"no model matches {args.pattern!r}; run 'mambaout list' for all names")
    _print_rows(rows, args.format, {"params": lambda n: f"{n / 1e6:.2f}M"})
    return 0


def _print_rows(rows: list[dict], fmt: str, pretty: dict | None = None) -> None:
    if fmt == "json":
        for r in rows:
            print(json.dumps(r))
        return
    keys = list(rows[0])
    if fmt == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        return
    pretty = pretty or {}

    def cell(k, v):
        return "-" if v is None else pretty[k](v) if k in pretty else str(v)

    table = [keys] + [[cell(k, r[k]) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(keys))]
    for j, row in enumerate(table):
        print("  ".join(c.ljust(wd) for c, wd in zip(row, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * wd for wd in widths))


# ----------------------------------------------------------------------------------------------------- info
def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=_model_name, help="model name (see 'mambaout list')")
    p.add_argument("--img-size", type=_positive_int, default=224, help="square input size for GMACs (default 224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--dense", action="store_true",
                   help="also the full Mask R-CNN (800×1280, 80 classes) and UperNet (512×2048, 150 classes) "
                        "built on it: params and GMACs next to the paper's (slow: a real detector forward)")


def _dense_info(name: str) -> list[dict]:
    from ..dense.complexity import dense_complexity
    from ..models.zoo import VARIANTS

    if VARIANTS[name].builder != "mambaout":
        raise CliError(f"--dense needs a MambaOut backbone, not {name!r}")
    return [dense_complexity(task, name) for task in ("detect", "segment")]


def _cmd_info(args) -> int:
    from ..models import create_model
    from ..models.complexity import count_macs, count_params
    from ..models.zoo import VARIANTS

    v = VARIANTS[args.model]
    size = args.img_size
    # A fixed-size model (the ViTs) is built for the asked size; MambaOut takes any size as it is.
    fixed = {"img_size": size} if v.cfg.get("fixed_input_size") else {}
    model = create_model(args.model, device="meta", **fixed)
    cfg = {k: (list(x) if isinstance(x, tuple) else x) for k, x in model.pretrained_cfg.items()}
    info = {
        "model": args.model,
        "params": count_params(model),
        "img_size": size,
        "gmacs": round(count_macs(model, (3, size, size)) / 1e9, 3),
        "gmacs_paper_224": v.gmacs,
        "top1_paper": v.top1_paper,
        "top1_timm": v.top1_timm,
        "train_drop_path": v.drop_path,
        "architecture": {k: (list(x) if isinstance(x, tuple) else x) for k, x in v.args.items()},
        "features": [{"stage": i, "channels": f["num_chs"], "stride": f["reduction"],
                      "size": [-(-size // f["reduction"])] * 2} for i, f in enumerate(model.feature_info)],
        "head_hidden_size": model.head_hidden_size,
        "pretrained_cfg": cfg,
    }
    if args.dense:
        info["dense"] = _dense_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model}")
    print(f"  params          {info['params']:,}")
    paper = f" (paper, 224²: {v.gmacs})" if v.gmacs else ""
    print(f"  GMACs @ {size}²{' ' * max(0, 6 - len(str(size)))} {info['gmacs']}{paper}")
    if v.top1_paper:
        timm_top1 = f", {v.top1_timm} (timm re-evaluation)" if v.top1_timm else ""
        causal = v.extra.get("top1_paper_causal")
        causal = f", {causal} with causal attention (paper)" if causal else ""
        print(f"  ImageNet top-1  {v.top1_paper} (paper){timm_top1}{causal}")
    print("  architecture    " + ", ".join(f"{k}={x}" for k, x in info["architecture"].items()))
    print("  features        " + ", ".join(
        f"stage {f['stage']}: {f['channels']} ch, stride {f['stride']}" for f in info["features"]))
    print(f"  head hidden     {info['head_hidden_size']}")
    print("  pretrained cfg  " + ", ".join(
        f"{k}={cfg[k]}" for k in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes")))
    src = cfg.get("url") or cfg.get("hf_hub_id") or "none"
    print(f"  weights         {src}")
    for d in info.get("dense", []):
        what = "Mask R-CNN" if d["task"] == "detect" else "UperNet   "
        paper = (f" (paper: {d['params_paper_m']}M, {d['gmacs_paper']}G)" if d["params_paper_m"] else "")
        print(f"  {what}      {d['params'] / 1e6:.1f}M params, {d['gmacs']} GMACs @ "
              f"{d['size'][0]}×{d['size'][1]}, {d['num_classes']} classes{paper}")
    return 0


# ------------------------------------------------------------------------------------------------------ env
def _add_env(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _cmd_env(args) -> int:
    import importlib.metadata as md
    import os
    import platform

    import torch

    from .. import __version__

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    info = {
        "mambaout": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    for dist in ("torch", "torchvision", "timm", "safetensors", "numpy", "pyyaml", "pillow", "huggingface-hub",
                 "gradio", "onnx", "onnxruntime", "pycocotools", "mamba-ssm"):
        info[dist] = version(dist)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:16s} {'not installed' if v is None else v}")
    return 0


# ---------------------------------------------------------------------------------------------------- train
# (flag, type, help) for every TrainConfig setting the command line exposes; None means "take the recipe's".
_TRAIN_FLAGS = [
    ("--model", str, "model name (default: the recipe's, else mambaout_tiny)"),
    ("--data-dir", str, "ImageFolder root holding train/<class>/* and val/<class>/*"),
    ("--output", str, "folder for checkpoints (best.pt, last.pt), logs, metrics and curves.png"),
    ("--recipe", str, "packaged recipe name or YAML path (default: the model's paper recipe if there is one)"),
    ("--epochs", int, "training epochs"),
    ("--warmup-epochs", int, "linear warm-up epochs"),
    ("--batch-size", int, "per-process batch size"),
    ("--global-batch-size", int, "images per optimiser step over all processes (sets accumulation steps)"),
    ("--lr", float, "peak learning rate (default: 1e-3 x global batch / 1024)"),
    ("--min-lr", float, "final learning rate of the cosine schedule"),
    ("--weight-decay", float, "AdamW weight decay (never on norms and biases)"),
    ("--img-size", int, "training and evaluation resolution"),
    ("--drop-path", float, "stochastic depth rate (rises linearly over the blocks)"),
    ("--smoothing", float, "label smoothing"),
    ("--mixup", float, "mixup alpha (0 = off)"),
    ("--cutmix", float, "cutmix alpha (0 = off)"),
    ("--auto-augment", str, "timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1 ('none' = off)"),
    ("--reprob", float, "random erasing probability"),
    ("--workers", int, "data loading processes per training process"),
    ("--amp", str, "mixed precision: none, bf16 (CPU or GPU), fp16 (GPU, with a grad scaler)"),
    ("--clip-grad", float, "clip the gradient norm to this value"),
    ("--ema-decay", float, "decay of the weight EMA (with --ema)"),
    ("--num-classes", int, "classifier size (default: number of class folders)"),
    ("--checkpoint", str, "initial weights to fine-tune from (any layout); the head is re-initialised if "
                          "its class count differs"),
    ("--resume", str, "continue an interrupted run from its last.pt"),
    ("--seed", int, "random seed"),
    ("--device", str, "auto, cpu or cuda"),
    ("--log-interval", int, "optimiser steps between log lines when output is not a terminal"),
    ("--stop-after", int, "end after this many epochs of this invocation (continue later with --resume)"),
    ("--nonfinite", str, "on a NaN/inf loss: stop (default; the last good checkpoint is kept) or skip the step "
                         "and count it"),
]
_TRAIN_SWITCHES = [
    ("--pretrained", "start from the published ImageNet weights"),
    ("--ema", "keep an exponential moving average of the weights and evaluate it too"),
    ("--compile", "torch.compile the model"),
    ("--channels-last", "feed images in channels_last memory format"),
    ("--grad-checkpointing", "recompute activations in the backward pass to save memory"),
    ("--strict-data", "fail on the first unreadable image instead of skipping it with a warning"),
]


def _add_train(p: argparse.ArgumentParser) -> None:
    for flag, kind, help_text in _TRAIN_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=help_text)
    for flag, help_text in _TRAIN_SWITCHES:
        p.add_argument(flag, action="store_true", default=None, help=help_text)
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def _train_config(args):
    from ..classify.config import list_recipes, resolve_config

    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                 for flag, *_ in _TRAIN_FLAGS + _TRAIN_SWITCHES}
    aa_off = overrides.get("auto_augment") in ("none", "")
    if aa_off:
        overrides["auto_augment"] = None  # None means "not given" below; switched off after resolving
    recipe = overrides.pop("recipe")
    if recipe is None and overrides.get("model") in list_recipes():
        recipe = overrides["model"]
    cfg = resolve_config(overrides, recipe=recipe)
    if aa_off:
        cfg.auto_augment = None
    return cfg


def _cmd_train(args) -> int:
    import yaml

    from ..models.zoo import VARIANTS

    cfg = _train_config(args)
    if cfg.model not in VARIANTS:
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


# ----------------------------------------------------------------------------------------------------- eval
def _add_eval(p: argparse.ArgumentParser) -> None:
    add_weights_options(p)
    p.add_argument("--data-dir", required=True, help="evaluation folder: <class>/<images>")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def _cmd_eval(args) -> int:
    from pathlib import Path

    from ..infer.evaluate import evaluate_model
    from ..models import model_from_source

    model = model_from_source(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
    name = model.pretrained_cfg["architecture"]
    res = evaluate_model(model, args.data_dir, args.batch_size, args.workers, args.amp, args.device)
    print(f"{name}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
          f"{res['images']} images  {res['images_per_sec']:.1f} img/s")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2) + "\n")
    return 0


# ------------------------------------------------------------------------------------------- prepare-digits
def _add_prepare_digits(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="folder to write train/<digit>/*.png and val/<digit>/*.png into")
    p.add_argument("--size", type=_positive_int, default=32, help="image side in pixels (default 32)")


def _cmd_prepare_digits(args) -> int:
    from ..data.digits import export_digits

    counts = export_digits(args.output, size=args.size)
    print(f"wrote {counts['train']} train and {counts['val']} val images of scikit-learn's digits to {args.output}")
    return 0


# -------------------------------------------------------------------------------------------------- predict
def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (recursive)")
    add_weights_options(p, "a checkpoint file (any layout) or an exported .onnx file")
    p.add_argument("--topk", type=_positive_int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="run on PyTorch or on ONNX Runtime (a torch checkpoint is exported on the fly)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast (torch backend)")
    p.add_argument("--fast", action="store_true",
                   help="fastest path: bfloat16 weights where bf16 is native (CPU with AVX-512 BF16/AMX, or CUDA), "
                        "float32 elsewhere; see the README's Speed section for its accuracy cost (torch backend; not "
                        "with --amp)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")


def _cmd_predict(args) -> int:
    from pathlib import Path

    from ..infer.predict import Predictor, expand_inputs

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:  # a mistyped argument, not a bad file among good ones: say so before loading any model
        raise CliError(f"not found: {', '.join(missing)}")
    predictor = Predictor(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                          backend=args.backend, device=args.device, amp=args.amp, fast=args.fast)
    paths = expand_inputs(args.inputs)
    if not paths:
        raise CliError(f"no image files found in {' '.join(args.inputs)}")
    failed = 0
    for res in predictor.predict_paths(paths, batch_size=args.batch_size, topk=args.topk):
        failed += "error" in res
        if args.json:
            print(json.dumps(res), flush=True)
        elif "error" in res:
            print(f"{res['path']}\n  error: {res['error']}", flush=True)
        else:
            lines = [f"  {r + 1}. {t['prob'] * 100:6.2f}%  {t['label']} ({t['index']})"
                     for r, t in enumerate(res["topk"])]
            print(res["path"] + "\n" + "\n".join(lines), flush=True)
    if failed:
        print(f"mambaout predict: {failed} of {len(paths)} file(s) could not be classified", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------------- demo
def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", type=_model_name,
                   help="a model with its published weights (repeatable; with --checkpoint: the model of a "
                        "checkpoint that does not record it)")
    p.add_argument("--checkpoint", action="append", help="a checkpoint or .onnx file to offer (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_positive_int, default=7860, help="port (default 7860)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--concurrency", type=_positive_int, default=2, help="requests processed at once (default 2)")


def _cmd_demo(args) -> int:
    from ..infer.demo import launch

    models = args.model or ([] if args.checkpoint else ["mambaout_femto"])
    launch(models, args.checkpoint, host=args.host, port=args.port, backend=args.backend,
           concurrency=args.concurrency)
    return 0


# ----------------------------------------------------------- export / bench / analyze / compare (own modules)
def _delegate(module: str, add: str, cmd: str):
    """Parser builder and handler living in another module, imported only when that subcommand is used."""
    import importlib

    def add_args(p: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(f"mambaout.{module}"), add)(p)

    def handler(args) -> int:
        return getattr(importlib.import_module(f"mambaout.{module}"), cmd)(args)

    return add_args, handler


_add_export, _cmd_export = _delegate("infer.export", "add_export_args", "cmd_export")
_add_bench, _cmd_bench = _delegate("infer.bench", "add_bench_args", "cmd_bench")
_add_analyze, _cmd_analyze = _delegate("lab.analysis", "add_analyze_args", "cmd_analyze")
_add_compare, _cmd_compare = _delegate("lab.compare", "add_compare_args", "cmd_compare")
_add_detect, _cmd_detect = _delegate("cli.dense", "add_detect_args", "cmd_detect")
_add_segment, _cmd_segment = _delegate("cli.dense", "add_segment_args", "cmd_segment")


# ------------------------------------------------------------------------------------------- prepare-shapes
def _add_prepare_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="dataset root to write")
    p.add_argument("--layout", choices=("coco", "ade20k"), required=True,
                   help="coco: annotations/instances_{train,val}2017.json + images; ade20k: images/ + annotations/")
    p.add_argument("--train", type=_positive_int, default=200, help="training images (default 200)")
    p.add_argument("--val", type=_positive_int, default=50, help="validation images (default 50)")
    p.add_argument("--size", type=_positive_int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)


def _cmd_prepare_shapes(args) -> int:
    from ..dense.shapes import make_shapes

    make_shapes(args.output, args.layout, n_train=args.train, n_val=args.val, size=(args.size, args.size),
                seed=args.seed)
    print(f"wrote {args.train} train and {args.val} val images of generated shapes ({args.layout} layout) "
          f"to {args.output}")
    return 0


COMMANDS = {
    "list": (_add_list, _cmd_list, "list the models: params, GMACs, reported top-1, weights"),
    "info": (_add_info, _cmd_info, "one model: params, GMACs at a size, feature maps, preprocessing"),
    "env": (_add_env, _cmd_env, "versions and hardware, for bug reports"),
    "train": (_add_train, _cmd_train, "train or fine-tune on an ImageFolder tree (torchrun for many processes)"),
    "eval": (_add_eval, _cmd_eval, "top-1 / top-5 / loss / images/s of weights on an ImageFolder split"),
    "predict": (_add_predict, _cmd_predict, "top-k labels for image files and folders (table or JSON lines)"),
    "demo": (_add_demo, _cmd_demo, "a Gradio web demo (upload or paste an image; API endpoint /predict)"),
    "export": (_add_export, _cmd_export, "export to ONNX or TorchScript, with a parity check against PyTorch"),
    "bench": (_add_bench, _cmd_bench, "images/s, latency, memory, params and GMACs of models"),
    "analyze": (_add_analyze, _cmd_analyze,
                "the paper's long-sequence test: tokens, Eq. 6 FLOPs, r_L = L/(6D) per task and stage"),
    "compare": (_add_compare, _cmd_compare,
                "train token mixers (conv, ssm, attention) in one skeleton on the same data; table and plot"),
    "detect": (_add_detect, _cmd_detect,
               "COCO Mask R-CNN + FPN on a MambaOut backbone: train, eval (box/mask AP), predict"),
    "segment": (_add_segment, _cmd_segment,
                "ADE20K UperNet on a MambaOut backbone: train, eval (mIoU), predict"),
    "prepare-shapes": (_add_prepare_shapes, _cmd_prepare_shapes,
                       "write a generated shapes dataset in the COCO or ADE20K layout (dense quickstart data)"),
    "prepare-digits": (_add_prepare_digits, _cmd_prepare_digits,
                       "write scikit-learn's handwritten digits as an ImageFolder tree (quickstart data)"),
}


# import name -> (distribution, extra) of the optional parts, for a one-line install hint.
_EXTRAS = {"gradio": ("gradio", "demo"), "onnx": ("onnx", "export"), "onnxruntime": ("onnxruntime", "export"),
           "pycocotools": ("pycocotools", "dense"), "skimage": ("scikit-image", "dense"),
           "matplotlib": ("matplotlib", "train"), "sklearn": ("scikit-learn", "train"), "tqdm": ("tqdm", "train")}


def _missing_extra(e: Exception) -> Exception:
    """An ImportError of an optional package, reworded to say which extra installs it; any other error as is."""
    root = (getattr(e, "name", None) or "").split(".")[0]
    if isinstance(e, ModuleNotFoundError) and root in _EXTRAS:
        dist, extra = _EXTRAS[root]
        return CliError(f"this needs the optional package '{dist}': pip install 'mambaout[{extra}]'")
    return e


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="mambaout", description="MambaOut vision models: zoo, training, inference.")
    parser.add_argument("--version", action="version", version=f"mambaout {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (add, handler, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # SUPPRESS: a --debug given before the command (mambaout --debug CMD) must survive the command's defaults.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback when something fails")
        add(p)
        p.set_defaults(func=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
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
        e = _missing_extra(e)
        known = isinstance(e, (CliError, ValueError, OSError, ImportError, RuntimeError))
        kind = "error" if known else f"internal error ({type(e).__name__})"
        print(f"mambaout {args.command}: {kind}: {e}", file=sys.stderr)
        return EXIT_USAGE if known else 1
