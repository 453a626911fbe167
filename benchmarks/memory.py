"""Peak memory of a training step with and without activation (gradient) checkpointing.

Each configuration runs in its own process, so the kernel's peak resident size (VmHWM, reset just before the
model is built) belongs to it alone; a step is zero-grad, forward, cross-entropy, backward and AdamW, run twice
(the second with the optimiser state already allocated). ``mambaout train --grad-checkpointing`` turns on the
same recomputation.

    python benchmarks/memory.py                                   # mambaout_tiny, batch 64, 224²
    python benchmarks/memory.py --model mambaout_femto --batch-size 16
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def one(model_name: str, batch_size: int, img_size: int, checkpointing: bool, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    import mambaout
    from mambaout.infer.bench import _PeakMemory

    x = torch.randn(batch_size, 3, img_size, img_size)
    y = torch.randint(0, 1000, (batch_size,))
    times = []
    with _PeakMemory(torch.device("cpu")) as mem:
        model = mambaout.create_model(model_name).train()
        model.set_grad_checkpointing(checkpointing)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(steps):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    peak_mib, source = mem.result
    return {"model": model_name, "batch_size": batch_size, "img_size": img_size, "checkpointing": checkpointing,
            "peak_gib": peak_mib / 1024, "peak_source": source, "last_step_s": times[-1],
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mambaout_tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--only", choices=("on", "off"), help="run one configuration in this process (internal)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.only:
        print(json.dumps(one(a.model, a.batch_size, a.img_size, a.only == "on", a.steps)))
        return 0
    rows = []
    for flag in ("off", "on"):
        cmd = [sys.executable, __file__, "--model", a.model, "--batch-size", str(a.batch_size), "--img-size",
               str(a.img_size), "--steps", str(a.steps), "--only", flag]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    from common import header, table

    print(header(f"train step, {a.model}, batch {a.batch_size}, {a.img_size}², fp32"))
    print()
    print(table(["activation checkpointing", "peak memory", "step time"],
                [["on" if r["checkpointing"] else "off", f"{r['peak_gib']:.2f} GiB", f"{r['last_step_s']:.1f} s"]
                 for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
