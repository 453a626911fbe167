"""Shared pieces of the benchmark scripts: interleaved timing, medians and the table/header format."""
from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def interleaved_times(runs: dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                      pause: float = 0.0) -> dict[str, list[float]]:
    """Seconds of each call of each function, timed in turns, one list per function in round order.

    Every round calls each function once, in an order rotated by one each round, so a change in machine load
    (or a cache warmed by the previous call) falls on all of them alike. ``pause``: seconds to sleep before each
    timed call, for runtimes with thread pools of their own (OpenMP, TBB, ONNX Runtime), whose idle workers
    spin for a while after a call and would otherwise be billed to the next runtime's call.
    """
    names = list(runs)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            runs[k]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[k].append(dt)
    return times


def interleaved(runs: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (:func:`interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(runs, rounds, warmup).items()}


def round_ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """For each function, the median over rounds of ``base``'s time / its time in the same round: on a machine
    whose speed drifts for seconds at a time, a ratio of calls made close together is steadier than a ratio of
    medians taken over the whole run."""
    return {k: statistics.median(b / t for b, t in zip(times[base], v)) for k, v in times.items()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> str:
    """The instruction-set extensions that decide these numbers (bf16 and int8 dot products, AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    wanted = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    return " ".join(w for w in wanted if w in flags) or torch.backends.cpu.get_cpu_capability()


def header(extra: str = "") -> str:
    import timm

    return (f"# {cpu_name()} ({cpu_features()}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"timm {timm.__version__}" + (f", {extra}" if extra else ""))


def table(columns: list[str], rows: list[list[object]]) -> str:
    right = ["---:" if i else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(right) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def paired_models(name: str):
    """timm's model and ours with the same (random, seeded) weights, both in eval mode."""
    import timm

    import mambaout

    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    ours = mambaout.create_model(name).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours
