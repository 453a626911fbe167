"""Forward throughput of mambaout vs timm's MambaOut, side by side in one process.

Both models get the same weights; runs alternate between the two (so drift in machine load hits both alike)
after a warm-up, and the table reports medians and the speed ratio.

    python benchmarks/bench_vs_timm.py --models mambaout_femto,mambaout_tiny --batch-size 16 --rounds 15
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import timm
import torch

import mambaout


def _time_once(model, x) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def bench(name: str, batch_size: int, img_size: int, rounds: int, warmup: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    ours = mambaout.create_model(name).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch_size, 3, img_size, img_size)
    times = {"timm": [], "mambaout": []}
    with torch.inference_mode():
        max_diff = (ours(x) - ref(x)).abs().max().item()
        for _ in range(warmup):
            _time_once(ref, x)
            _time_once(ours, x)
        for r in range(rounds):
            # Alternate which one goes first so neither always runs on a warmer cache.
            order = (("timm", ref), ("mambaout", ours)) if r % 2 == 0 else (("mambaout", ours), ("timm", ref))
            for key, model in order:
                times[key].append(_time_once(model, x))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name, "batch_size": batch_size, "img_size": img_size, "threads": torch.get_num_threads(),
        "timm_img_s": batch_size / med["timm"], "mambaout_img_s": batch_size / med["mambaout"],
        "speedup": med["timm"] / med["mambaout"], "max_abs_diff": max_diff,
        "timm_spread": (min(times["timm"]), max(times["timm"])),
        "mambaout_spread": (min(times["mambaout"]), max(times["mambaout"])),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mambaout_femto,mambaout_tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=15, help="timed runs per model (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object per model instead of a table")
    a = p.parse_args(argv)
    rows = [bench(n, a.batch_size, a.img_size, a.rounds, a.warmup, a.threads) for n in a.models.split(",")]
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, timm {timm.__version__}, "
          f"eval fp32, {rows[0]['threads']} threads, batch {a.batch_size}, {a.img_size}², median of {a.rounds}")
    print("| model | timm img/s | mambaout img/s | speed-up | max abs logit diff |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['timm_img_s']:.1f} | {r['mambaout_img_s']:.1f} | {r['speedup']:.2f}× "
              f"| {r['max_abs_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
