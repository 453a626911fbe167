"""``mambaout list``, ``info`` and ``env``: the model zoo and the machine."""
from __future__ import annotations

import argparse
import json

from .argtypes import model_name, positive_int
from .common import CliError


# ----------------------------------------------------------------------------------------------------- list
def add_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'mambaout_*_rw'")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--pretrained", action="store_true",
                   help="list the published weights instead, one row per pretrained tag as timm names them "
                        "(NAME.TAG, usable wherever a model name is): classes, input and test sizes, crop, source")


def _pretrained_rows(pattern: str | None) -> list[dict]:
    import fnmatch

    from ..models.zoo import VARIANTS

    rows = []
    for name, v in VARIANTS.items():
        for tag, w in v.pretrained().items():
            full = f"{name}.{tag}"
            if pattern and not (fnmatch.fnmatch(full, pattern) or fnmatch.fnmatch(name, pattern)):
                continue
            rows.append({"model": full, "classes": w.num_classes, "input_size": w.input_size[-1],
                         "test_size": w.test_input_size[-1], "crop_pct": w.crop_pct,
                         "test_crop_pct": w.crop_pct if w.test_crop_pct is None else w.test_crop_pct,
                         "crop_mode": w.crop_mode, "weights": "official release" if w.url else f"hf: {w.hf_hub_id}"})
    return rows


def cmd_list(args) -> int:
    from ..models import create_model, list_models
    from ..models.complexity import count_macs, count_params
    from ..models.zoo import VARIANTS
    from ..utils.tables import RowWriter, dict_table

    rows = _pretrained_rows(args.pattern) if args.pretrained else []
    for name in [] if args.pretrained else list_models(args.pattern):
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
    pretty = {"params": lambda n: f"{n / 1e6:.2f}M"}
    columns = [(k, k, pretty.get(k, str)) for k in rows[0]]
    out = RowWriter(args.format, lambda rs: dict_table(rs, columns))
    for row in rows:
        out.write(row)
    out.close()
    return 0


# ----------------------------------------------------------------------------------------------------- info
def add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=model_name, help="model name (see 'mambaout list')")
    p.add_argument("--img-size", type=positive_int, default=224, help="square input size for GMACs (default 224)")
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


def _model_info(name: str, size: int) -> dict:
    from ..models import create_model
    from ..models.complexity import count_macs, count_params
    from ..models.zoo import VARIANTS

    v = VARIANTS[name]
    # A fixed-size model (the ViTs) is built for the asked size; MambaOut takes any size as it is.
    fixed = {"img_size": size} if v.cfg.get("fixed_input_size") else {}
    model = create_model(name, device="meta", **fixed)
    return {
        "model": name,
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
        "pretrained_cfg": {k: (list(x) if isinstance(x, tuple) else x) for k, x in model.pretrained_cfg.items()},
    }


def _info_lines(info: dict) -> list[str]:
    from ..models.zoo import VARIANTS

    v, size, cfg = VARIANTS[info["model"]], info["img_size"], info["pretrained_cfg"]
    paper = f" (paper, 224²: {v.gmacs})" if v.gmacs else ""
    lines = [f"{info['model']}", f"  params          {info['params']:,}",
             f"  GMACs @ {size}²{' ' * max(0, 6 - len(str(size)))} {info['gmacs']}{paper}"]
    if v.top1_paper:
        timm_top1 = f", {v.top1_timm} (timm re-evaluation)" if v.top1_timm else ""
        causal = v.extra.get("top1_paper_causal")
        causal = f", {causal} with causal attention (paper)" if causal else ""
        lines.append(f"  ImageNet top-1  {v.top1_paper} (paper){timm_top1}{causal}")
    lines.append("  architecture    " + ", ".join(f"{k}={x}" for k, x in info["architecture"].items()))
    lines.append("  features        " + ", ".join(
        f"stage {f['stage']}: {f['channels']} ch, stride {f['stride']}" for f in info["features"]))
    lines.append(f"  head hidden     {info['head_hidden_size']}")
    lines.append("  pretrained cfg  " + ", ".join(
        f"{k}={cfg[k]}" for k in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes")))
    lines.append(f"  weights         {cfg.get('url') or cfg.get('hf_hub_id') or 'none'}")
    for d in info.get("dense", []):
        what = "Mask R-CNN" if d["task"] == "detect" else "UperNet   "
        paper = (f" (paper: {d['params_paper_m']}M, {d['gmacs_paper']}G)" if d["params_paper_m"] else "")
        lines.append(f"  {what}      {d['params'] / 1e6:.1f}M params, {d['gmacs']} GMACs @ "
                     f"{d['size'][0]}×{d['size'][1]}, {d['num_classes']} classes{paper}")
    return lines


def cmd_info(args) -> int:
    info = _model_info(args.model, args.img_size)
    if args.dense:
        info["dense"] = _dense_info(args.model)
    print(json.dumps(info, indent=2) if args.json else "\n".join(_info_lines(info)))
    return 0


# ------------------------------------------------------------------------------------------------------ env
_DISTRIBUTIONS = ("torch", "torchvision", "timm", "safetensors", "numpy", "pyyaml", "pillow", "huggingface-hub",
                  "gradio", "onnx", "onnxruntime", "openvino", "nncf", "pycocotools", "mamba-ssm", "transformers",
                  "mmengine", "mmcv", "mmcv-lite", "mmdet", "mmsegmentation")


def add_env_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def cmd_env(args) -> int:
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
    info.update({dist: version(dist) for dist in _DISTRIBUTIONS})
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:16s} {'not installed' if v is None else v}")
    return 0
