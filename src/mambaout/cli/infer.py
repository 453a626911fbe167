"""``mambaout eval``, ``predict``, ``demo``, ``export`` and ``bench``: using trained weights."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .argtypes import add_weights_options, model_name, model_names, non_negative_int, positive_int
from .common import CliError


# ----------------------------------------------------------------------------------------------------- eval
def add_eval_args(p: argparse.ArgumentParser) -> None:
    add_weights_options(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", help="evaluation folder: <class>/<images>")
    where.add_argument("--val-data", help="evaluation data: an ImageFolder directory, a WebDataset shard spec "
                                          "(brace notation or glob) or hf:PATH (its validation split)")
    p.add_argument("--image-column", help="the image column of an hf: dataset (default: its Image feature)")
    p.add_argument("--label-column", help="the label column of an hf: dataset (default: its ClassLabel feature)")
    p.add_argument("--strict-data", action="store_true",
                   help="fail on the first unreadable image instead of skipping it with a warning")
    p.add_argument("--test-size", action="store_true",
                   help="evaluate at the weights' test size: the pretrained cfg's test_input_size and test_crop_pct "
                        "(288 for the ImageNet weights, where timm's re-evaluation scores higher; a model trained "
                        "here: its training size)")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def cmd_eval(args) -> int:
    from ..infer.evaluate import evaluate_model
    from ..models import model_from_source

    model = model_from_source(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
    name = model.pretrained_cfg["architecture"]
    res = evaluate_model(model, args.val_data or args.data_dir, args.batch_size, args.workers, args.amp,
                         args.device, strict=args.strict_data, image_column=args.image_column,
                         label_column=args.label_column, test_size=args.test_size)
    print(f"{name}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
          f"{res['images']} images  {res['images_per_sec']:.1f} img/s  at {res['input_size'][-1]}px, crop_pct "
          f"{res['crop_pct']:g}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2) + "\n")
    return 0


# -------------------------------------------------------------------------------------------------- predict
def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (recursive)")
    add_weights_options(p, "a checkpoint file (any layout) or an exported .onnx file")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="run on PyTorch or on ONNX Runtime (a torch checkpoint is exported on the fly)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast (torch backend)")
    p.add_argument("--fast", action="store_true",
                   help="fastest path: bfloat16 weights where bf16 is native (CPU with AVX-512 BF16/AMX, or CUDA), "
                        "float32 elsewhere; see the README's Speed section for its accuracy cost (torch backend; not "
                        "with --amp)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")


def check_inputs_exist(inputs: list[str]) -> None:
    """A CliError naming the inputs that do not exist: a mistyped argument, not a bad file among good ones, said
    before any model loads."""
    missing = [p for p in inputs if not Path(p).exists()]
    if missing:
        raise CliError(f"not found: {', '.join(missing)}")


def image_files(inputs: list[str]) -> list[Path]:
    """The image files of ``inputs`` (files, and folders searched recursively); a CliError if there are none."""
    from ..infer.predict import expand_inputs

    paths = expand_inputs(inputs)
    if not paths:
        raise CliError(f"no image files found in {' '.join(inputs)}")
    return paths


def _topk_text(res: dict) -> str:
    if "error" in res:
        return f"{res['path']}\n  error: {res['error']}"
    lines = [f"  {r + 1}. {t['prob'] * 100:6.2f}%  {t['label']} ({t['index']})" for r, t in enumerate(res["topk"])]
    return res["path"] + "\n" + "\n".join(lines)


def cmd_predict(args) -> int:
    from ..infer.predict import Predictor

    check_inputs_exist(args.inputs)
    predictor = Predictor(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                          backend=args.backend, device=args.device, amp=args.amp, fast=args.fast)
    paths = image_files(args.inputs)
    failed = 0
    for res in predictor.predict_paths(paths, batch_size=args.batch_size, topk=args.topk):
        failed += "error" in res
        print(json.dumps(res) if args.json else _topk_text(res), flush=True)
    if failed:
        print(f"mambaout predict: {failed} of {len(paths)} file(s) could not be classified", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------------ cam
def add_cam_args(p: argparse.ArgumentParser) -> None:
    from ..infer.cam import METHODS

    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (recursive)")
    add_weights_options(p)
    p.add_argument("--method", choices=tuple(METHODS), default="gradcam", help="CAM method (default gradcam)")
    p.add_argument("--target-class", default=None, metavar="K",
                   help="class to explain, by index or label (default: each image's top class)")
    p.add_argument("--layer", default=None,
                   help="layer to explain: stages.N (MambaOut) or blocks.N (ViT); default: the deepest stage at "
                        "least 7 positions across at the model's input size")
    p.add_argument("--topk", type=positive_int, default=5, help="classes recorded per image (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per pass (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder for <image>_cam.png (overlay), <image>_cam.npy (map), cam.json (top classes) and "
                        "cam.png (the first 24 overlays on one sheet)")


def cmd_cam(args) -> int:
    from ..infer.cam import write_cams
    from ..infer.predict import Predictor
    from ..utils.optional import require

    require("pytorch_grad_cam", "cam", why="class activation maps")
    check_inputs_exist(args.inputs)
    paths = image_files(args.inputs)
    predictor = Predictor(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, device=args.device)
    summary = write_cams(predictor, paths, args.output, method=args.method, target_class=args.target_class,
                         layer=args.layer, topk=args.topk, batch_size=args.batch_size)
    failed = 0
    for rec in summary["images"]:
        if "error" in rec:
            failed += 1
            continue
        best = rec["top"][0]
        print(f"{rec['image']}: top {best['label']} ({best['prob'] * 100:.1f}%), explained {rec['target']['label']}"
              f" -> {rec['overlay']}")
    print(f"{summary['method']} on {summary['layer']}; overlays and cam.json written to {args.output}")
    if failed:
        print(f"mambaout cam: {failed} of {len(paths)} file(s) could not be read", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------------- demo
def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", type=model_name,
                   help="a model with its published weights (repeatable; with --checkpoint: the model of a "
                        "checkpoint that does not record it)")
    p.add_argument("--checkpoint", action="append", help="a checkpoint or .onnx file to offer (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--concurrency", type=positive_int, default=2, help="requests processed at once (default 2)")
    p.add_argument("--cam", action="store_true",
                   help="also show a Grad-CAM heatmap of the top class (torch backend; needs mambaout[cam])")


def cmd_demo(args) -> int:
    from ..infer.demo import launch

    if args.cam and args.backend == "onnx":
        raise CliError("--cam needs the PyTorch model (gradients); it does not work with --backend onnx")
    models = args.model or ([] if args.checkpoint else ["mambaout_femto"])
    launch(models, args.checkpoint, host=args.host, port=args.port, backend=args.backend,
           concurrency=args.concurrency, cam=args.cam)
    return 0


# --------------------------------------------------------------------------------------------------- export
def add_export_args(parser: argparse.ArgumentParser) -> None:
    """``mambaout export``'s options."""
    from ..infer.export import FORMATS

    add_weights_options(parser)
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="safetensors (weights and preprocessing, loads without running code; the default), "
                             "onnx (dynamic batch; the default for an --output ending in .onnx) or torchscript")
    parser.add_argument("--output", required=True, help="file to write (replaced atomically if it exists)")
    parser.add_argument("--img-size", type=positive_int, default=None,
                        help="square input size (default: the model's, usually 224)")
    parser.add_argument("--opset", type=positive_int, default=None,
                        help="ONNX opset version (default: the exporter's)")


def cmd_export(args: argparse.Namespace) -> int:
    """Build the model, export it, and print how closely the file reproduces PyTorch's logits."""
    from ..data.transforms import resolve_data_config
    from ..infer import export as E
    from ..models import model_from_source

    fmt = E.resolve_format(getattr(args, "format", None), args.output)
    if fmt == "safetensors" and Path(args.output).suffix != ".safetensors":
        raise ValueError(f"--output {args.output}: safetensors (the default format) files end in .safetensors; "
                         f"rename it, or pass --format onnx or --format torchscript")
    if Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a folder; give the path of the file to write")
    model = model_from_source(args.model, pretrained=bool(args.pretrained), checkpoint_path=args.checkpoint).eval()
    name = model.pretrained_cfg["architecture"]
    img_size = getattr(args, "img_size", None)
    model_args = E.checkpoint_model_args(args.checkpoint) if fmt == "safetensors" else None
    path = E.export_model(model, fmt, args.output, img_size=img_size, opset=getattr(args, "opset", None),
                          model_args=model_args)
    meta = E.export_metadata(model, img_size)
    c, h, w = meta["input_size"]
    print(f"exported {name} to {path} ({fmt}, input N x {c} x {h} x {w} with N free, "
          f"{path.stat().st_size / 2**20:.1f} MiB)")
    try:
        images = E.sample_images(resolve_data_config(model, args={"input_size": tuple(meta["input_size"])}))
    except ImportError:
        images = None  # scikit-image is optional; the random checks still run
    diffs = E.parity_check(model, path, fmt, images)
    print("\n".join(E.parity_report(diffs, fmt, len(images) if images else None)))
    return 0


# ---------------------------------------------------------------------------------------------------- bench
def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """``mambaout bench``'s options."""
    from ..infer.bench import AMP_MODES, BACKENDS, DEVICES

    parser.add_argument("--model", type=model_names, required=True, metavar="NAME[,NAME...]",
                        help="model name(s), comma-separated")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per run (default 16)")
    parser.add_argument("--img-size", type=positive_int, default=224, help="square input side (default 224)")
    parser.add_argument("--amp", choices=AMP_MODES, default="none",
                        help="autocast precision: none, bf16, fp16 (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="model and input in channels_last format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compiles in the warm-up)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch, or onnx: onnxruntime on a temporary ONNX export")
    parser.add_argument("--train", action="store_true", help="time forward + backward + AdamW step")
    parser.add_argument("--fast", action="store_true",
                        help="fastest path: bfloat16 weights where bf16 is native (CPU with AVX-512 BF16/AMX, or "
                             "CUDA), float32 elsewhere; see the README's Speed section for its accuracy cost (torch "
                             "backend, eval only; not with --amp)")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--runs", type=positive_int, default=10, help="timed runs (default 10)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="intra-op CPU threads (default: torch's / onnxruntime's own)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (CUDA if available), cpu or cuda")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="table, json (one object per line) or csv")


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmark each model of ``--model`` in turn and print the results (json and csv a line per model as it
    is measured, so a long run shows progress and a crash keeps what was measured)."""
    from ..infer.bench import FIELDS, benchmark, check_options, format_table
    from ..utils.tables import RowWriter

    options = dict(batch_size=args.batch_size, img_size=args.img_size, amp=args.amp,
                   channels_last=args.channels_last, compile=args.compile, backend=args.backend, train=args.train,
                   warmup=args.warmup, runs=args.runs, threads=args.threads, device=args.device,
                   fast=args.fast)
    names = args.model if isinstance(args.model, list) else model_names(args.model)
    for name in names:  # refuse a bad combination before spending minutes on the first model
        check_options(name, **options)
    out = RowWriter(args.format, format_table, fieldnames=FIELDS)
    for name in names:
        out.write(benchmark(name, **options))
    out.close()
    return 0
