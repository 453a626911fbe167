"""mambaout against timm's MambaOut, side by side in one process: eval, the fastest path, and training.

Both implementations get the same weights; their runs alternate (see ``common.interleaved``) after a warm-up,
and the tables report medians and ratios (timm time / our time, so > 1 means we are faster).

    python benchmarks/bench_vs_timm.py                       # every suite, the README's tables
    python benchmarks/bench_vs_timm.py --suite eval --batch-sizes 16,1
    python benchmarks/bench_vs_timm.py --suite fast --with-onnx
    python benchmarks/bench_vs_timm.py --suite train
    python benchmarks/bench_vs_timm.py --suite deploy --threads 2     # every deployment path (mambaout[openvino])

Suites:
  eval   fp32 eager forward under inference_mode; also our plain path (fused inference switched off: what runs
         wherever a hook, a tracer or a replaced layer is present), to show what the fused path gains
  fast   our fastest path (``--fast``: bfloat16 weights, fused inference) against timm fp32 eager; for context
         timm's bf16 autocast, our fp32, and optionally ONNX Runtime on our export
  train  forward + cross-entropy + backward + AdamW step, fp32 and bf16 autocast
  deploy every CPU deployment path against timm fp32 eager: our fp32 eager and --fast, ONNX Runtime fp32 and
         INT8 (static QDQ), OpenVINO fp32, bf16 and INT8 (NNCF), the OpenVINO ones compiled for the batch's static
         shape; INT8 calibrated on scikit-image's photographs (speed does not depend on the calibration's quality).
         Its ratios are medians over rounds of calls made in the same round, with a pause before each call
         (``common.round_ratios``): several runtimes' thread pools share two cores here
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, interleaved, interleaved_times, paired_models, round_ratios, table  # noqa: E402

from mambaout.models.fast import set_fused_inference  # noqa: E402


def _no_grad(model, x, fused: bool = True):
    def run():
        old = set_fused_inference(fused)
        try:
            with torch.inference_mode():
                model(x)
        finally:
            set_fused_inference(old)
    return run


def suite_eval(models, batch_sizes, img_size, rounds) -> list[dict]:
    rows = []
    for bs in batch_sizes:
        for name in models:
            ref, ours = paired_models(name)
            x = torch.randn(bs, 3, img_size, img_size)
            with torch.inference_mode():
                diff = (ours(x) - ref(x)).abs().max().item()
            med = interleaved({"timm": _no_grad(ref, x), "ours": _no_grad(ours, x),
                               "ours_reference": _no_grad(ours, x, fused=False)},
                              rounds=rounds if bs > 1 else 2 * rounds)
            rows.append({"suite": "eval", "model": name, "batch_size": bs, "img_size": img_size,
                         "timm_img_s": bs / med["timm"], "ours_img_s": bs / med["ours"],
                         "ours_reference_img_s": bs / med["ours_reference"],
                         "speedup": med["timm"] / med["ours"],
                         "speedup_reference": med["timm"] / med["ours_reference"], "max_abs_diff": diff})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def suite_fast(models, batch_sizes, img_size, rounds, with_onnx: bool) -> list[dict]:
    from mambaout.models.fast import to_fast

    rows = []
    for bs in batch_sizes:
        for name in models:
            ref, ours = paired_models(name)
            fast, dtype = to_fast(copy.deepcopy(ours), "cpu")
            x = torch.randn(bs, 3, img_size, img_size)

            def timm_bf16(ref=ref, x=x):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    ref(x)

            runs = {"timm": _no_grad(ref, x), "timm_bf16_autocast": timm_bf16, "ours": _no_grad(ours, x),
                    "ours_fast": _no_grad(fast, x.to(dtype))}
            tmp = None
            if with_onnx:
                from mambaout.infer.export import OnnxRunner, export_model

                tmp = tempfile.TemporaryDirectory()
                path = export_model(ours, "onnx", Path(tmp.name) / "m.onnx", img_size=img_size)
                runner = OnnxRunner(path, threads=torch.get_num_threads())
                runs["ours_onnxruntime"] = lambda runner=runner, x=x: runner(x)
            med = interleaved(runs, rounds=rounds if bs > 1 else 2 * rounds)
            with torch.inference_mode():
                diff = (fast(x.to(dtype)).float() - ref(x)).abs().max().item()
            row = {"suite": "fast", "model": name, "batch_size": bs, "img_size": img_size, "fast_dtype": str(dtype),
                   "timm_img_s": bs / med["timm"], "max_abs_diff_random_input": diff}
            for k in runs:
                if k != "timm":
                    row[f"{k}_speedup"] = med["timm"] / med[k]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if tmp is not None:
                tmp.cleanup()
    return rows


def _photos(model, img_size: int) -> list:
    """scikit-image's colour and grey photographs, prepared as the model prepares its input."""
    from PIL import Image
    from skimage import data as skdata

    from mambaout.data.transforms import create_eval_transform, resolve_data_config

    transform = create_eval_transform(resolve_data_config(model, args={"input_size": (3, img_size, img_size)}))
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "horse",
             "hubble_deep_field", "immunohistochemistry", "retina")
    out = []
    for n in names:
        img = getattr(skdata, n, None)
        if img is not None:
            out.append(transform(Image.fromarray(img()).convert("RGB")))
    return out


def _runtimes(ours, bs: int, img_size: int, threads: int, folder: Path) -> dict:
    """name -> (runner callable on a numpy batch, precision) for every runtime path that is installed."""
    import importlib.util

    from mambaout.infer.deploy import OpenVINORunner, export_int8
    from mambaout.infer.export import OnnxRunner, export_model

    calib = _photos(ours, img_size)
    out = {}
    onnx32 = export_model(ours, "onnx", folder / "m.onnx", img_size=img_size)
    out["onnxruntime"] = OnnxRunner(onnx32, threads=threads)
    q_onnx = export_int8(ours, "onnx", folder / "q.onnx", calib, img_size)
    out["onnxruntime_int8"] = OnnxRunner(q_onnx, threads=threads)
    if importlib.util.find_spec("openvino") is not None:
        ir = export_model(ours, "openvino", folder / "m.xml", img_size=img_size)
        out["openvino_fp32"] = OpenVINORunner(ir, precision="f32", threads=threads)
        out["openvino_bf16"] = OpenVINORunner(ir, precision="bf16", threads=threads)
        q = export_int8(ours, "openvino", folder / "q.xml", calib, img_size)
        out["openvino_int8"] = OpenVINORunner(q, precision="bf16", threads=threads)
    runs = {}
    for name, runner in out.items():
        if isinstance(runner, OpenVINORunner):
            request = runner.compiled(bs).create_infer_request()
            runs[name] = lambda x, request=request: request.infer([x])
        else:
            runs[name] = runner
    return runs


def suite_deploy(models, batch_sizes, img_size, rounds) -> list[dict]:
    from mambaout.models.fast import to_fast

    threads = torch.get_num_threads()
    rows = []
    for bs in batch_sizes:
        for name in models:
            ref, ours = paired_models(name)
            fast, dtype = to_fast(copy.deepcopy(ours), "cpu")
            x = torch.randn(bs, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
            xn = x.numpy()
            runs = {"timm": _no_grad(ref, x), "ours": _no_grad(ours, x), "ours_fast": _no_grad(fast, x.to(dtype))}
            with tempfile.TemporaryDirectory() as tmp:
                for key, run in _runtimes(ours, bs, img_size, threads, Path(tmp)).items():
                    runs[key] = lambda run=run, xn=xn: run(xn)
                times = interleaved_times(runs, rounds=rounds if bs > 1 else 2 * rounds, pause=0.05)
            vs_timm, vs_fast = round_ratios(times, "timm"), round_ratios(times, "ours_fast")
            row = {"suite": "deploy", "model": name, "batch_size": bs, "img_size": img_size, "threads": threads,
                   "fast_dtype": str(dtype), "timm_img_s": bs / statistics.median(times["timm"])}
            for k in runs:
                if k != "timm":
                    row[f"{k}_speedup"] = vs_timm[k]
                    row[f"{k}_vs_fast"] = vs_fast[k]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def suite_train(models, configs, rounds) -> list[dict]:
    rows = []
    for name in models:
        for bs, size in configs:
            for amp in ("none", "bf16"):
                ref, ours = paired_models(name)
                x = torch.randn(bs, 3, size, size)
                y = torch.randint(0, 1000, (bs,), generator=torch.Generator().manual_seed(0))
                runs = {}
                for key, model in (("timm", ref), ("ours", ours)):
                    model.train()
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

                    def step(model=model, opt=opt, x=x, y=y, amp=amp):
                        opt.zero_grad(set_to_none=True)
                        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" \
                            else contextlib.nullcontext()
                        with ctx:
                            loss = F.cross_entropy(model(x).float(), y)
                        loss.backward()
                        opt.step()
                    runs[key] = step
                med = interleaved(runs, rounds=rounds, warmup=1)
                rows.append({"suite": "train", "model": name, "batch_size": bs, "img_size": size, "amp": amp,
                             "timm_ms": med["timm"] * 1e3, "ours_ms": med["ours"] * 1e3,
                             "speedup": med["timm"] / med["ours"]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    out = []
    ev = [r for r in rows if r["suite"] == "eval"]
    if ev:
        out.append(table(
            ["model", "batch", "timm img/s", "mambaout img/s", "speed-up", "plain path", "max abs diff"],
            [[r["model"], r["batch_size"], f"{r['timm_img_s']:.1f}", f"{r['ours_img_s']:.1f}",
              f"**{r['speedup']:.2f}×**", f"{r['speedup_reference']:.2f}×", f"{r['max_abs_diff']:.1e}"]
             for r in ev]))
    fa = [r for r in rows if r["suite"] == "fast"]
    if fa:
        onnx = any("ours_onnxruntime_speedup" in r for r in fa)
        cols = ["model", "batch", "timm fp32 img/s", "timm bf16 autocast", "mambaout fp32", "mambaout --fast"]
        cols += ["mambaout ONNX Runtime"] if onnx else []
        out.append(table(cols, [
            [r["model"], r["batch_size"], f"{r['timm_img_s']:.1f}", f"{r['timm_bf16_autocast_speedup']:.2f}×",
             f"{r['ours_speedup']:.2f}×", f"**{r['ours_fast_speedup']:.2f}×**"]
            + ([f"{r['ours_onnxruntime_speedup']:.2f}×"] if onnx else []) for r in fa]))
    de = [r for r in rows if r["suite"] == "deploy"]
    if de:
        keys = [k.removesuffix("_speedup") for k in de[0] if k.endswith("_speedup")]
        label = {"ours": "fp32 eager", "ours_fast": "--fast", "onnxruntime": "ORT fp32",
                 "onnxruntime_int8": "ORT int8", "openvino_fp32": "OV fp32", "openvino_bf16": "OV bf16",
                 "openvino_int8": "OV int8"}
        best = "openvino_int8" if "openvino_int8" in keys else "onnxruntime_int8"
        out.append(table(["model", "batch", "timm fp32 img/s", *[label.get(k, k) for k in keys],
                          f"{label[best]} / --fast"],
                         [[r["model"], r["batch_size"], f"{r['timm_img_s']:.1f}",
                           *[f"{r[k + '_speedup']:.2f}×" for k in keys], f"**{r[best + '_vs_fast']:.2f}×**"]
                          for r in de]))
    tr = [r for r in rows if r["suite"] == "train"]
    if tr:
        out.append(table(["model", "batch", "size", "precision", "timm ms/step", "mambaout ms/step", "speed-up"],
                         [[r["model"], r["batch_size"], f"{r['img_size']}²",
                           "fp32" if r["amp"] == "none" else "bf16 autocast", f"{r['timm_ms']:.0f}",
                           f"{r['ours_ms']:.0f}", f"**{r['speedup']:.2f}×**"] for r in tr]))
    return "\n\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=("all", "eval", "fast", "train", "deploy"), default="all",
                   help="all: eval, fast and train; deploy runs on its own")
    p.add_argument("--models", default="mambaout_femto,mambaout_tiny")
    p.add_argument("--batch-sizes", default="16,1", help="eval and fast suites (default 16,1)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--train-configs", default="16x224,64x64", help="BATCHxSIZE,... for the train suite")
    p.add_argument("--train-models", default="mambaout_femto")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (batch 1 runs twice as many)")
    p.add_argument("--train-rounds", type=int, default=7)
    p.add_argument("--with-onnx", action="store_true", help="fast suite: add ONNX Runtime on our export")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines instead of tables")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    models = a.models.split(",")
    sizes = [int(b) for b in a.batch_sizes.split(",")]
    rows = []
    if a.suite in ("all", "eval"):
        rows += suite_eval(models, sizes, a.img_size, a.rounds)
    if a.suite in ("all", "fast"):
        rows += suite_fast(models, sizes, a.img_size, a.rounds, a.with_onnx)
    if a.suite == "deploy":
        rows += suite_deploy(models, sizes, a.img_size, a.rounds)
    if a.suite in ("all", "train"):
        configs = [tuple(int(v) for v in c.split("x")) for c in a.train_configs.split(",")]
        rows += suite_train(a.train_models.split(","), configs, a.train_rounds)
    if a.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(header("medians of interleaved runs; speed-up = timm time / mambaout time"))
        print()
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
