"""The ``mambaout`` command line: one small parser builder and one handler per subcommand."""
from __future__ import annotations

import argparse
import json
import sys
import traceback

EXIT_USAGE = 2


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def _model_name(text: str) -> str:
    from .models.zoo import VARIANTS

    if text not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; run 'mambaout list' for the names")
    return text


# ----------------------------------------------------------------------------------------------------- list
def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'mambaout_*_rw'")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")


def _cmd_list(args) -> int:
    from .complexity import count_macs, count_params
    from .models import create_model, list_models
    from .models.zoo import VARIANTS

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


def _cmd_info(args) -> int:
    from .complexity import count_macs, count_params
    from .models import create_model
    from .models.zoo import VARIANTS

    model = create_model(args.model, device="meta")
    v = VARIANTS[args.model]
    size = args.img_size
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
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model}")
    print(f"  params          {info['params']:,}")
    paper = f" (paper, 224²: {v.gmacs})" if v.gmacs else ""
    print(f"  GMACs @ {size}²{' ' * max(0, 6 - len(str(size)))} {info['gmacs']}{paper}")
    if v.top1_paper:
        print(f"  ImageNet top-1  {v.top1_paper} (paper), {v.top1_timm} (timm re-evaluation)")
    print("  architecture    " + ", ".join(f"{k}={x}" for k, x in info["architecture"].items()))
    print("  features        " + ", ".join(
        f"stage {f['stage']}: {f['channels']} ch, stride {f['stride']}" for f in info["features"]))
    print(f"  head hidden     {info['head_hidden_size']}")
    print("  pretrained cfg  " + ", ".join(
        f"{k}={cfg[k]}" for k in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes")))
    src = cfg.get("url") or cfg.get("hf_hub_id") or "none"
    print(f"  weights         {src}")
    return 0


# ------------------------------------------------------------------------------------------------------ env
def _add_env(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _cmd_env(args) -> int:
    import importlib.metadata as md
    import os
    import platform

    import torch

    from . import __version__

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


COMMANDS = {
    "list": (_add_list, _cmd_list, "list the models: params, GMACs, reported top-1, weights"),
    "info": (_add_info, _cmd_info, "one model: params, GMACs at a size, feature maps, preprocessing"),
    "env": (_add_env, _cmd_env, "versions and hardware, for bug reports"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="mambaout", description="MambaOut vision models: zoo, training, inference.")
    parser.add_argument("--version", action="version", version=f"mambaout {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (add, handler, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
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
    except Exception as e:  # one line for the user; the traceback on request
        if args.debug:
            traceback.print_exc()
        known = isinstance(e, (CliError, ValueError, FileNotFoundError, ImportError, RuntimeError))
        kind = "error" if known else f"internal error ({type(e).__name__})"
        print(f"mambaout {args.command}: {kind}: {e}", file=sys.stderr)
        return EXIT_USAGE if known else 1
