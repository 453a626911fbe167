"""Every performance number of the README, one script after another: ``python benchmarks/run_all.py``.

Each benchmark runs in its own process (so one's memory and allocator state cannot colour the next) and its
table is written to ``benchmarks/results/<name>.md`` as well as printed. Run it on a quiet machine: the
ratios are side by side in one process, but a busy machine still adds noise to the medians. About 25 minutes
on 2 cores.

    python benchmarks/run_all.py
    python benchmarks/run_all.py --only bench_vs_timm,peak
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
JOBS = {
    "bench_vs_timm": ["bench_vs_timm.py", "--with-onnx"],
    "peak": ["peak.py"],
    "deploy": ["bench_vs_timm.py", "--suite", "deploy", "--threads", "2"],
    "peak_int8": ["peak.py", "--int8", "--models", "mambaout_femto,mambaout_tiny", "--threads", "2"],
    "memory": ["memory.py"],
    "accuracy": ["accuracy.py"],
    "bench_ssm": ["bench_ssm.py"],
    "bench_loader": ["bench_loader.py", "--profile"],
    "finetune_digits": ["finetune_digits.py"],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(JOBS), help=f"comma-separated subset of: {', '.join(JOBS)}")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args(argv)
    names = a.only.split(",")
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / JOBS[name][0]), *JOBS[name][1:]],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(name)
            print(proc.stderr[-4000:], file=sys.stderr)
            continue
        (a.out / f"{name}.md").write_text(proc.stdout)
        print(proc.stdout, flush=True)
        print(f"({time.perf_counter() - t0:.0f} s; written to {a.out / (name + '.md')})\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
