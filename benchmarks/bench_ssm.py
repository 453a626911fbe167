"""Training-step time (forward + backward) of the SSM token mixer vs MambaOut's conv mixer, in one process.

The Mamba block is the Gated CNN block with ``SSM(act(conv(Z)))`` as token mixer; this measures what the SSM costs
in pure PyTorch on this machine. Every model (the conv model and one SSM model per scan order) runs in each round,
in rotating order, after a warm-up, so drift in machine load hits all alike; the table reports medians. The scan's
share is the time of the model's selective scans alone (their recorded inputs replayed through
``selective_scan``, forward and backward, in the same rounds) over the model's step time.

    python benchmarks/bench_ssm.py                 # mambaout_femto, batch 8, 224², scans 1d, bidirectional, cross
    python benchmarks/bench_ssm.py --quick         # batch 2, 128², 3 rounds: a fast check
    python benchmarks/bench_ssm.py --chunk-size 16 --block-elems 262144 --scans 1d   # tuning the scan

Heavy: run one benchmark at a time, on an otherwise idle machine (the header says how busy the CPU was just before
the timed runs; re-run if it warns).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import mambaout
from mambaout.models import scan as scan_mod
from mambaout.models import ssm as ssm_mod


def _busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of the machine's CPU time that other processes used over ``seconds`` (Linux; None elsewhere).

    Our own CPU time is subtracted: with OMP_WAIT_POLICY=ACTIVE, torch's idle worker threads spin.
    """
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])  # utime + stime
        return sum(fields), fields[3] + fields[4], own  # total, idle + iowait, ours (all in clock ticks)

    try:
        t0, i0, o0 = sample()
        time.sleep(seconds)
        t1, i1, o1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = max(1, t1 - t0)
    return max(0.0, (total - (i1 - i0) - (o1 - o0)) / total)


def _step(model: torch.nn.Module, x: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(x).mean().backward()
    return time.perf_counter() - t0


def _record_scans(model: torch.nn.Module, x: torch.Tensor) -> list:
    """The arguments of every selective_scan call in one forward pass of ``model``."""
    calls = []
    original = ssm_mod.selective_scan

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    ssm_mod.selective_scan = record
    try:
        with torch.no_grad():
            model(x)
    finally:
        ssm_mod.selective_scan = original
    return calls


def _scan_step(calls: list) -> float:
    """Forward + backward of the recorded scans alone, as in training (every tensor argument wants a gradient)."""
    total = 0.0
    for args, kwargs in calls:
        args = [a.detach().clone().requires_grad_() for a in args]
        kwargs = {k: v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v
                  for k, v in kwargs.items()}
        t0 = time.perf_counter()
        y = scan_mod.selective_scan(*args, **kwargs)
        y.backward(torch.ones_like(y))
        total += time.perf_counter() - t0
    return total


def bench(a) -> dict:
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.block_elems:
        scan_mod._BLOCK_ELEMS = a.block_elems
    mixer_kwargs = {"chunk_size": a.chunk_size} if a.chunk_size else {}
    torch.manual_seed(0)
    models = {"conv": mambaout.create_model(a.model)}
    for scan in a.scans:
        models[scan] = mambaout.create_model(a.model, token_mixer="ssm", mixer_kwargs={"scan": scan, **mixer_kwargs})
    x = torch.randn(a.batch_size, 3, a.img_size, a.img_size)
    scans = {k: _record_scans(m, x) for k, m in models.items() if k != "conv"}
    jobs = [(k, lambda m=m: _step(m, x)) for k, m in models.items()]
    jobs += [(f"scan:{k}", lambda c=c: _scan_step(c)) for k, c in scans.items()]
    times = {k: [] for k, _ in jobs}
    busy = _busy_fraction()
    for _ in range(a.warmup):
        for _, job in jobs:
            job()
    for r in range(a.rounds):
        for k, job in jobs[r % len(jobs):] + jobs[: r % len(jobs)]:
            times[k].append(job())
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k, m in models.items():
        macs = mambaout.count_macs(m, (3, a.img_size, a.img_size))
        row = {"mixer": "conv" if k == "conv" else "ssm", "scan": "" if k == "conv" else k,
               "params": mambaout.count_params(m), "gmacs": macs / 1e9, "ms": 1e3 * med[k],
               "vs_conv": med[k] / med["conv"], "spread_ms": (1e3 * min(times[k]), 1e3 * max(times[k]))}
        if k != "conv":
            row.update(scan_ms=1e3 * med[f"scan:{k}"], scan_share=med[f"scan:{k}"] / med[k])
        rows.append(row)
    return {"model": a.model, "batch_size": a.batch_size, "img_size": a.img_size, "rounds": a.rounds,
            "threads": torch.get_num_threads(), "chunk_size": a.chunk_size or scan_mod.DEFAULT_CHUNK,
            "block_elems": scan_mod._BLOCK_ELEMS, "busy_before": busy, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mambaout_femto")
    p.add_argument("--scans", default=",".join(ssm_mod.SCANS), help="comma-separated scan orders")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--chunk-size", type=int, default=None, help="the scan's chunk (default: the library's)")
    p.add_argument("--block-elems", type=int, default=None, help="states per scan block (tuning knob)")
    p.add_argument("--quick", action="store_true", help="batch 2, 128², 3 rounds")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a = p.parse_args(argv)
    a.scans = [s for s in a.scans.split(",") if s]
    if a.quick:
        a.batch_size, a.img_size, a.rounds = 2, 128, 3
    r = bench(a)
    if a.json:
        print(json.dumps(r))
        return 0
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {r['threads']} threads, "
          f"{r['model']}, batch {r['batch_size']}, {r['img_size']}², train step (fwd+bwd), median of {r['rounds']}; "
          f"chunk {r['chunk_size']}, block {r['block_elems']}")
    if r["busy_before"] is not None:
        print(f"# CPU used by other processes just before the timed runs: {100 * r['busy_before']:.0f}%")
        if r["busy_before"] > 0.1:
            print("# warning: the machine was busy; re-run for trustworthy numbers")
    print("| mixer | scan | params | GMACs | ms / step | vs conv | scan ms | scan share |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in r["rows"]:
        scan_cols = (f"{row['scan_ms']:.0f} | {100 * row['scan_share']:.0f}%" if "scan_ms" in row else "- | -")
        print(f"| {row['mixer']} | {row['scan'] or '-'} | {row['params'] / 1e6:.2f}M | {row['gmacs']:.3f} "
              f"| {row['ms']:.0f} | {row['vs_conv']:.2f}× | {scan_cols} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
