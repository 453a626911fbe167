"""Achieved GFLOP/s of every MambaOut model as a share of this CPU's measured matmul peak (fp32 and bf16).

The peak is the best of large square GEMMs (torch.mm and oneDNN's linear, several sizes): what the machine's
best-tuned kernel reaches, not a datasheet number. A model's rate is 2 × MACs per image (``count_macs``, the
paper's counting) × images per second, for our eval forward in float32 and on the ``--fast`` path, and for
timm's float32 eager forward as a reference.

    python benchmarks/peak.py
    python benchmarks/peak.py --models mambaout_tiny --batch-size 16 --rounds 7
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
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


def model_rates(name: str, batch_size: int, img_size: int, rounds: int) -> dict:
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

    med = interleaved({"timm_fp32": run(ref, x), "ours_fp32": run(ours, x), "ours_fast": run(fast, xf)},
                      rounds=rounds, warmup=1)
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
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    peak32, where32 = matmul_peak(torch.float32)
    peak16, where16 = matmul_peak(torch.bfloat16)
    rows = []
    for name in a.models.split(","):
        rows.append(model_rates(name, a.batch_size, a.img_size, a.rounds))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps({"fp32_peak_gflops": peak32, "bf16_peak_gflops": peak16}))
        for r in rows:
            print(json.dumps(r))
        return 0
    print(header(f"eval batch {a.batch_size}, {a.img_size}²"))
    print(f"\nmatmul peak: fp32 {peak32:.0f} GFLOP/s ({where32}), bf16 {peak16:.0f} GFLOP/s ({where16})\n")
    def share(rate: float, dtype: str) -> str:
        return f"{rate:.0f} ({100 * rate / (peak16 if 'bfloat16' in dtype else peak32):.0f}%)"

    print(table(
        ["model", "GMACs", "timm fp32 GFLOP/s (% fp32 peak)", "mambaout fp32 (% fp32 peak)",
         "mambaout --fast (% of its dtype's peak)"],
        [[r["model"], f"{r['gmacs']:.2f}", share(r["timm_fp32_gflops"], "float32"),
          f"**{share(r['ours_fp32_gflops'], 'float32')}**", share(r["ours_fast_gflops"], r["fast_dtype"])]
         for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
