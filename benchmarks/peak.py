"""Achieved GFLOP/s of every MambaOut model as a share of this CPU's measured matmul peak (fp32, bf16, int8).

The peak is the best of large square GEMMs (torch.mm and oneDNN's linear, several sizes): what the machine's
best-tuned kernel reaches, not a datasheet number. A model's rate is 2 × MACs per image (``count_macs``, the
paper's counting) × images per second, for our eval forward in float32 and on the ``--fast`` path, and for
timm's float32 eager forward as a reference. ``--int8`` adds the int8 peak (``torch._int_mm``, int8 x int8 ->
int32 through oneDNN's VNNI/AMX kernels) and the rate of the OpenVINO INT8 model (NNCF, static shape), counting
every multiply-add as int8 work, though the depthwise convolutions stay in floating point.

    python benchmarks/peak.py
    python benchmarks/peak.py --int8 --models mambaout_femto,mambaout_tiny --threads 2
    python benchmarks/peak.py --models mambaout_tiny --batch-size 16 --rounds 7
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, interleaved, paired_models, table  # noqa: E402

MODELS = "mambaout_femto,mambaout_kobe,mambaout_tiny,mambaout_small,mambaout_base"


def matmul_peak(dtype: torch.dtype, rounds: int = 7) -> tuple[float, str]:
    """Best GFLOP/s over square GEMMs of a few sizes, with torch.mm and with oneDNN's linear."""
    best, where = 0.0, ""
    linear = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    for n in (1024, 2048, 3072):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        runs = {"torch.mm": lambda a=a, b=b: torch.mm(a, b)}
        if linear is not None:
            runs["onednn linear"] = lambda a=a, b=b: linear(a, b, None, "none", [], "")
        for k, sec in interleaved(runs, rounds=rounds, warmup=2).items():
            rate = 2 * n ** 3 / sec / 1e9
            if rate > best:
                best, where = rate, f"{k} {n}³"
    return best, where


def int8_peak(rounds: int = 7) -> tuple[float, str]:
    """Best int8 GOP/s (2 ops per multiply-add) over square int8 GEMMs with int32 accumulation."""
    best, where = 0.0, ""
    for n in (1024, 2048, 3072):
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        sec = interleaved({"int_mm": lambda a=a, b=b: torch._int_mm(a, b)}, rounds=rounds, warmup=2)["int_mm"]
        rate = 2 * n ** 3 / sec / 1e9
        if rate > best:
            best, where = rate, f"torch._int_mm {n}³"
    return best, where


def openvino_int8_run(ours, batch_size: int, img_size: int, folder: Path):
    from bench_vs_timm import _photos

    from mambaout.infer.deploy import OpenVINORunner, export_int8

    q = export_int8(ours, "openvino", folder / "q.xml", _photos(ours, img_size), img_size)
    request = OpenVINORunner(q, precision="bf16", threads=torch.get_num_threads()).compiled(
        batch_size).create_infer_request()
    x = torch.randn(batch_size, 3, img_size, img_size).numpy()
    return lambda: request.infer([x])


def model_rates(name: str, batch_size: int, img_size: int, rounds: int, int8: bool = False) -> dict:
    from mambaout.models.complexity import count_macs
    from mambaout.models.fast import to_fast

    ref, ours = paired_models(name)
    fast, dtype = to_fast(copy.deepcopy(ours), "cpu")
    macs = count_macs(ours, (3, img_size, img_size))
    x = torch.randn(batch_size, 3, img_size, img_size)
    xf = x.to(dtype)

    def run(m, inp):
        def f():
            with torch.inference_mode():
                m(inp)
        return f

    runs = {"timm_fp32": run(ref, x), "ours_fp32": run(ours, x), "ours_fast": run(fast, xf)}
    with tempfile.TemporaryDirectory() as tmp:
        if int8:
            runs["openvino_int8"] = openvino_int8_run(ours, batch_size, img_size, Path(tmp))
        med = interleaved(runs, rounds=rounds, warmup=1)
    flop = 2 * macs * batch_size
    return {"model": name, "gmacs": macs / 1e9, "batch_size": batch_size, "fast_dtype": str(dtype),
            **{f"{k}_gflops": flop / v / 1e9 for k, v in med.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--int8", action="store_true", help="add the int8 peak and the OpenVINO INT8 model's rate")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    peak32, where32 = matmul_peak(torch.float32)
    peak16, where16 = matmul_peak(torch.bfloat16)
    peak8, where8 = int8_peak() if a.int8 else (None, "")
    rows = []
    for name in a.models.split(","):
        rows.append(model_rates(name, a.batch_size, a.img_size, a.rounds, a.int8))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps({"fp32_peak_gflops": peak32, "bf16_peak_gflops": peak16, "int8_peak_gops": peak8}))
        for r in rows:
            print(json.dumps(r))
        return 0
    print(header(f"eval batch {a.batch_size}, {a.img_size}²"))
    int8_note = f", int8 {peak8:.0f} GOP/s ({where8})" if a.int8 else ""
    print(f"\nmatmul peak: fp32 {peak32:.0f} GFLOP/s ({where32}), bf16 {peak16:.0f} GFLOP/s ({where16}){int8_note}\n")

    def share(rate: float, dtype: str) -> str:
        peak = peak8 if dtype == "int8" else peak16 if "bfloat16" in dtype else peak32
        return f"{rate:.0f} ({100 * rate / peak:.0f}%)"

    cols = ["model", "GMACs", "timm fp32 GFLOP/s (% fp32 peak)", "mambaout fp32 (% fp32 peak)",
            "mambaout --fast (% of its dtype's peak)"] + (["OpenVINO int8 GOP/s (% int8 peak)"] if a.int8 else [])
    print(table(cols, [[r["model"], f"{r['gmacs']:.2f}", share(r["timm_fp32_gflops"], "float32"),
                        f"**{share(r['ours_fp32_gflops'], 'float32')}**", share(r["ours_fast_gflops"], r["fast_dtype"])]
                       + ([share(r["openvino_int8_gflops"], "int8")] if a.int8 else []) for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
