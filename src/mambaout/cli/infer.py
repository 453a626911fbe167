"""``mambaout eval``, ``predict``, ``demo``, ``export`` and ``bench``: using trained weights."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
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
    add_backend_args(p)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def _eval_model(args, stack):
    """The model eval scores: the torch model, or an exported file's runner behind the same interface (opened
    as it is, or exported on the fly into a folder ``stack`` removes afterwards); and the device to run on."""
    import tempfile

    from ..infer.deploy import ExportedClassifier, backend_of_file, export_for_runtime, open_runtime
    from ..models import model_from_source

    file_backend = backend_of_file(args.checkpoint)
    int8 = getattr(args, "int8", False)
    backend = file_backend or ("openvino" if int8 and args.backend == "torch" else args.backend)
    if backend == "torch":
        calibration_for(args, None)
        return model_from_source(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint), args.device
    if file_backend and args.backend not in ("torch", file_backend):
        raise CliError(f"{args.checkpoint} is an {file_backend} file; it runs with --backend {file_backend}")
    for flag, used in (("--amp", args.amp != "none"), ("--test-size", args.test_size)):
        if used:
            raise CliError(f"{flag} applies to --backend torch only (an exported model has its own precision and a "
                           "fixed input size)")
    if file_backend:
        calibration_for(args, None)
        return ExportedClassifier(open_runtime(args.checkpoint, backend)), "cpu"
    model = model_from_source(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint).eval()
    calib = calibration_for(args, model)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"mambaout-{backend}-")))
    path = export_for_runtime(model, backend, folder, int8=int8, calib_images=calib)
    return ExportedClassifier(open_runtime(path, backend), fallback_cfg=model.pretrained_cfg), "cpu"


def cmd_eval(args) -> int:
    import contextlib

    from ..infer.evaluate import evaluate_model

    with contextlib.ExitStack() as stack:
        model, device = _eval_model(args, stack)
        name = model.pretrained_cfg["architecture"]
        res = evaluate_model(model, args.val_data or args.data_dir, args.batch_size, args.workers, args.amp,
                             device, strict=args.strict_data, image_column=args.image_column,
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
    add_weights_options(p, "a checkpoint file (any layout), an exported .onnx file or an OpenVINO .xml IR")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default 16)")
    add_backend_args(p)
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast (torch backend)")
    p.add_argument("--fast", action="store_true",
                   help="fastest path with no cost beyond bfloat16: bfloat16 weights where bf16 is native (CPU with "
                        "AVX-512 BF16/AMX, or CUDA), float32 elsewhere; with --backend openvino, its bfloat16 "
                        "inference; see the README's Speed section for its accuracy cost (not with --amp or "
                        "--backend onnx)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """--backend, --int8, --calib-dir, --calib-size: shared by predict and eval."""
    from ..infer.deploy import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="run on PyTorch, ONNX Runtime or OpenVINO (needs mambaout[openvino]); a torch checkpoint is "
                        "exported on the fly, an exported .onnx/.xml file picks its own")
    add_int8_args(p, "INT8 post-training quantization of the on-the-fly export (OpenVINO/NNCF unless --backend "
                     "onnx)")


def add_int8_args(p: argparse.ArgumentParser, what: str) -> None:
    """--int8, --calib-dir, --calib-size (predict, eval and export)."""
    from ..infer.deploy import CALIB_SIZE

    p.add_argument("--int8", action="store_true",
                   help=f"{what}, calibrated on --calib-dir. Costs accuracy: see the README's Deployment section for "
                        "the top-1 agreement with float32 measured on the quickstart digits model")
    p.add_argument("--calib-dir", default=None,
                   help="--int8: folder of your own images to calibrate on (recursive; unreadable files skipped)")
    p.add_argument("--calib-size", type=positive_int, default=CALIB_SIZE,
                   help=f"--int8: images used for calibration, spread over the folder (default {CALIB_SIZE})")


def calibration_for(args, model_source) -> list | None:
    """The calibration tensors --int8 asks for, prepared with the model's own preprocessing; None without --int8."""
    if not getattr(args, "int8", False):
        if getattr(args, "calib_dir", None):
            raise CliError("--calib-dir is used only with --int8")
        return None
    from ..infer.deploy import backend_of_file

    if backend_of_file(args.checkpoint):
        raise CliError(f"--int8 quantizes an export made on the fly; {args.checkpoint} is already exported (export "
                       "it with mambaout export --int8 instead)")
    if not args.calib_dir:
        raise CliError("--int8 needs --calib-dir: a folder of your own images to calibrate on")
    from ..data.transforms import resolve_data_config

    return _calibration(args.calib_dir, resolve_data_config(model_source), args.calib_size)


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


def _model_and_calibration(args):
    """The torch model (None for an exported file, which the Predictor opens) and the --int8 calibration."""
    from ..infer.deploy import backend_of_file

    if backend_of_file(args.checkpoint):
        calibration_for(args, None)  # refuses --int8 / --calib-dir on an exported file
        return None, None
    if not getattr(args, "int8", False):
        calibration_for(args, None)
        return None, None
    from ..models import model_from_source

    model = model_from_source(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
    return model, calibration_for(args, model)


def cmd_predict(args) -> int:
    from ..infer.predict import Predictor

    check_inputs_exist(args.inputs)
    model, calib = _model_and_calibration(args)
    predictor = Predictor(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, model=model,
                          backend=args.backend, device=args.device, amp=args.amp, fast=args.fast,
                          int8=getattr(args, "int8", False), calib_images=calib)
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
    parser.add_argument("--format", choices=(*FORMATS, "hf"), default=None,
                        help="safetensors (weights and preprocessing, loads without running code; the default), "
                             "onnx (dynamic batch; the default for an --output ending in .onnx), torchscript, "
                             "openvino (an IR: OUTPUT.xml + OUTPUT.bin; the default for an --output ending in .xml; "
                             "needs mambaout[openvino]), or hf (a folder in timm's Hugging Face hub layout: "
                             "config.json, model.safetensors and a README.md model card; loads in timm, transformers "
                             "and mambaout)")
    parser.add_argument("--output", required=True,
                        help="file to write (replaced atomically if it exists); the folder to write with --format hf")
    parser.add_argument("--repo-id", default=None,
                        help="--format hf: the hub repository (org/name) the model card's loading examples name")
    parser.add_argument("--img-size", type=positive_int, default=None,
                        help="square input size (default: the model's, usually 224)")
    parser.add_argument("--opset", type=positive_int, default=None,
                        help="ONNX opset version (default: the exporter's)")
    add_int8_args(parser, "INT8 post-training quantization (openvino: NNCF; onnx: ONNX Runtime static QDQ)")
    parser.add_argument("--keep-float", default=None, metavar="OP[,OP...]",
                        help="--int8: layer types left in floating point: OpenVINO op types (e.g. GroupConvolution, "
                             "the depthwise convolution) or ONNX ones ('depthwise Conv', MatMul); default none")


def _check_export_args(args, fmt: str) -> None:
    if fmt == "safetensors" and Path(args.output).suffix != ".safetensors":
        raise ValueError(f"--output {args.output}: safetensors (the default format) files end in .safetensors; "
                         f"rename it, or pass --format onnx, openvino or torchscript")
    if fmt == "openvino" and Path(args.output).suffix.lower() != ".xml":
        raise ValueError(f"--output {args.output}: an OpenVINO IR is named *.xml (its weights go beside it as *.bin)")
    if fmt == "hf":
        if Path(args.output).is_file():
            raise ValueError(f"--output {args.output} is a file; --format hf writes a folder")
        for flag, used in (("--img-size", args.img_size), ("--opset", args.opset)):
            if used:
                raise ValueError(f"{flag} does not apply to --format hf (it saves the weights and preprocessing)")
    elif Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a folder; give the path of the file to write")
    if getattr(args, "repo_id", None) and fmt != "hf":
        raise ValueError("--repo-id is used only with --format hf")
    if getattr(args, "int8", False):
        if fmt not in ("onnx", "openvino"):
            raise ValueError(f"--int8 works with --format onnx or openvino, not {fmt}")
        if not args.calib_dir:
            raise ValueError("--int8 needs --calib-dir: a folder of your own images to calibrate on")
    elif getattr(args, "calib_dir", None) or getattr(args, "keep_float", None):
        raise ValueError(f"{'--calib-dir' if args.calib_dir else '--keep-float'} is used only with --int8")


def _file_size(path: Path, fmt: str) -> float:
    parts = [path, path.with_suffix(".bin")] if fmt == "openvino" else [path]
    return sum(p.stat().st_size for p in parts) / 2**20


def cmd_export(args: argparse.Namespace) -> int:
    """Build the model, export it, and print how closely the file reproduces PyTorch's logits."""
    from ..data.transforms import resolve_data_config
    from ..infer import export as E
    from ..models import model_from_source

    fmt = E.resolve_format(getattr(args, "format", None), args.output)
    _check_export_args(args, fmt)
    int8 = getattr(args, "int8", False)
    model = model_from_source(args.model, pretrained=bool(args.pretrained), checkpoint_path=args.checkpoint).eval()
    name = model.pretrained_cfg["architecture"]
    img_size = getattr(args, "img_size", None)
    if fmt == "hf":
        return _export_hf(model, args)
    meta = E.export_metadata(model, img_size)
    data_cfg = resolve_data_config(model, args={"input_size": tuple(meta["input_size"])})
    if int8:
        from ..infer.deploy import export_int8

        calib = _calibration(args.calib_dir, data_cfg, args.calib_size)
        keep = [t.strip() for t in (args.keep_float or "").split(",") if t.strip()]
        path = export_int8(model, fmt, args.output, calib, img_size=img_size, keep_float=keep)
        print(f"kept in floating point: {', '.join(keep) if keep else 'nothing'}")
    else:
        # What create_model recorded: the keywords the checkpoint was trained with, so the file rebuilds the same net.
        model_args = getattr(model, "model_args", None) if fmt == "safetensors" else None
        path = E.export_model(model, fmt, args.output, img_size=img_size, opset=getattr(args, "opset", None),
                              model_args=model_args)
    c, h, w = meta["input_size"]
    print(f"exported {name} to {path} ({fmt}{' int8' if int8 else ''}, input N x {c} x {h} x {w} with N free, "
          f"{_file_size(path, fmt):.1f} MiB)")
    try:
        images = E.sample_images(data_cfg)
    except ImportError:
        images = None  # scikit-image is optional; the random checks still run
    diffs = E.parity_check(model, path, fmt, images)
    print("\n".join(E.parity_report(diffs, fmt, len(images) if images else None, int8=int8)))
    if int8:
        _report_agreement(model, path, fmt, calib)
    return 0


def _export_hf(model, args) -> int:
    """``--format hf``: the folder, then the same parity check as every export: the folder loaded back."""
    import torch

    from ..infer.share import WEIGHTS_NAME, run_info, write_pretrained
    from ..models import create_model

    info = None
    if args.checkpoint:
        try:
            info = run_info(args.checkpoint)
        except FileNotFoundError:  # a hub-layout folder or hf-hub: source: no run beside it
            pass
    out = write_pretrained(model, args.output, info=info, repo_id=args.repo_id)
    size = (out / WEIGHTS_NAME).stat().st_size / 2**20
    print(f"exported {model.pretrained_cfg['architecture']} to {out}/ (hf: config.json, {WEIGHTS_NAME} "
          f"{size:.1f} MiB, README.md)")
    c, h, w = model.pretrained_cfg["input_size"]
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    back = create_model(f"local-dir:{out}").eval()
    with torch.inference_mode():
        diff = (back(x) - model(x)).abs().max().item()
    print(f"parity: the folder loaded back by mambaout gives logits within {diff:.2e} of the model's "
          "(2 random images)")
    if diff > 1e-5:  # the same weights in the same network: only a wrong folder differs by more than rounding
        raise CliError(f"{out} does not reproduce the model (max abs logit difference {diff:.2e})")
    return 0


def _calibration(calib_dir: str, data_cfg: dict, size: int) -> list:
    from ..infer.deploy import calibration_images

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        images, skipped = calibration_images(calib_dir, data_cfg, size)
    note = f" ({len(skipped)} unreadable file(s) skipped: {', '.join(skipped[:3])})" if skipped else ""
    print(f"calibrating on {len(images)} image(s) from {calib_dir}{note}", flush=True)
    return images


def _report_agreement(model, path: Path, fmt: str, images: list) -> None:
    from ..infer.deploy import agreement
    from ..infer.export import load_exported

    a = agreement(model, load_exported(path, fmt), images)
    print(f"int8 against float32 on the {a['images']} calibration image(s): top-1 agreement "
          f"{a['top1_agreement']:.2f}%, max |logit difference| {a['max_abs_diff']:.3g} "
          f"({100 * a['max_rel_diff']:.1f}% of the logit range)")
    if a["top1_agreement"] < 99.0:
        print(f"warning: the int8 model changes the top class of {100 - a['top1_agreement']:.1f}% of the images; "
              "measure it on held-out images (benchmarks/accuracy.py) before deploying it")


# ---------------------------------------------------------------------------------------------------- bench
def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """``mambaout bench``'s options."""
    from ..infer.bench import AMP_MODES, BACKENDS, DEVICES

    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=model_names, default=None, metavar="NAME[,NAME...]",
                       help="model name(s), comma-separated (random weights: speed does not depend on them)")
    which.add_argument("--checkpoint", default=None,
                       help="an exported .onnx or OpenVINO .xml file, timed as it is")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per run (default 16)")
    parser.add_argument("--img-size", type=positive_int, default=224, help="square input side (default 224)")
    parser.add_argument("--amp", choices=AMP_MODES, default="none",
                        help="autocast precision: none, bf16, fp16 (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="model and input in channels_last format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compiles in the warm-up)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch; onnx: onnxruntime on a temporary ONNX export; openvino: OpenVINO on a temporary "
                             "IR, static shape per batch size (needs mambaout[openvino])")
    parser.add_argument("--int8", action="store_true",
                        help="--backend onnx/openvino: time the INT8-quantized export (calibrated on scikit-image's "
                             "photographs; speed only: for accuracy calibrate on your own images with export --int8)")
    parser.add_argument("--train", action="store_true", help="time forward + backward + AdamW step")
    parser.add_argument("--fast", action="store_true",
                        help="fastest path with no cost beyond bfloat16: bfloat16 weights where bf16 is native (CPU "
                             "with AVX-512 BF16/AMX, or CUDA), float32 elsewhere; with --backend openvino, its "
                             "bfloat16 inference; see the README's Speed section for its accuracy cost (eval only; "
                             "not with --amp or --backend onnx)")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--runs", type=positive_int, default=10, help="timed runs (default 10)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="intra-op CPU threads (default: torch's / onnxruntime's own)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (CUDA if available), cpu or cuda")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="table, json (one object per line) or csv")


def _bench_names(args) -> list[str]:
    checkpoint = getattr(args, "checkpoint", None)
    if not checkpoint:
        return args.model if isinstance(args.model, list) else model_names(args.model)
    from ..infer.deploy import backend_of_file, read_openvino_metadata
    from ..infer.export import read_onnx_metadata

    backend = backend_of_file(checkpoint)
    if backend is None:
        raise CliError(f"--checkpoint {checkpoint}: bench times an exported .onnx or .xml file (for PyTorch the "
                       "weights do not change the speed: give --model)")
    name = (read_onnx_metadata if backend == "onnx" else read_openvino_metadata)(checkpoint).get("model_name")
    if not isinstance(name, str):
        raise CliError(f"{checkpoint} does not record which model it is (no model_name metadata)")
    return [name]


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmark each model of ``--model`` in turn and print the results (json and csv a line per model as it
    is measured, so a long run shows progress and a crash keeps what was measured)."""
    from ..infer.bench import FIELDS, benchmark, check_options, format_table
    from ..utils.tables import RowWriter

    options = dict(batch_size=args.batch_size, img_size=args.img_size, amp=args.amp,
                   channels_last=args.channels_last, compile=args.compile, backend=args.backend, train=args.train,
                   warmup=args.warmup, runs=args.runs, threads=args.threads, device=args.device,
                   fast=args.fast, int8=getattr(args, "int8", False), checkpoint=getattr(args, "checkpoint", None))
    names = _bench_names(args)
    for name in names:  # refuse a bad combination before spending minutes on the first model
        check_options(name, **options)
    out = RowWriter(args.format, format_table, fieldnames=FIELDS)
    for name in names:
        out.write(benchmark(name, **options))
    out.close()
    return 0
