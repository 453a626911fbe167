"""``mambaout compare``: train several token mixers in the same skeleton, same recipe, seed and data.

This is the paper's question as one command: does the SSM (or attention, full or causal) earn its cost over
MambaOut's plain depthwise convolution on *your* data? Each model is trained with ``mambaout train``'s own
machinery; the result is a table (params, GMACs, images/s, top-1) and a plot, written to the output folder.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..utils.tables import markdown_table as _markdown

DEFAULT_MODELS = ["mambaout_femto", "mambaout_femto_ssm", "mambaout_femto_attn", "mambaout_femto_causal_attn"]
COLUMNS = ["model", "token_mixer", "scan", "params", "gmacs", "images_per_sec", "train_images_per_sec",
           "top1", "top5", "best_top1", "epochs"]


def compare(models: list[str], data_dir: str | Path, output: str | Path, epochs: int | None = None,
            recipe: str = "quickstart", seed: int = 0, overrides: dict | None = None,
            bench_batch: int = 16) -> list[dict]:
    """Train each of ``models`` with ``recipe`` (plus ``overrides``) and return one result row per model."""
    from ..classify.config import resolve_config
    from ..classify.train import train
    from ..infer.bench import benchmark
    from ..models import create_model
    from ..models.complexity import count_macs, count_params
    from ..models.zoo import get_variant

    output = Path(output)
    rows = []
    for name in models:
        cfg = resolve_config({**(overrides or {}), "model": name, "data_dir": str(data_dir),
                              "output": str(output / name), "seed": seed, "epochs": epochs}, recipe=recipe)
        summary = train(cfg)
        args = get_variant(name).args
        meta_model = create_model(name, device="meta")
        speed = benchmark(name, batch_size=bench_batch, img_size=cfg.img_size, runs=5, warmup=2, device="cpu")
        rows.append({
            "model": name,
            "token_mixer": args.get("token_mixer", "conv"),
            "scan": (args.get("mixer_kwargs") or {}).get("scan", ""),
            "params": count_params(meta_model),
            "gmacs": round(count_macs(meta_model, (3, cfg.img_size, cfg.img_size)) / 1e9, 6),
            "images_per_sec": round(speed["images_per_sec"], 1),
            "train_images_per_sec": round(summary.get("train_images_per_sec", 0.0), 1),
            "top1": round(summary["top1"], 2),
            "top5": round(summary["top5"], 2),
            "best_top1": round(summary["best_top1"], 2),
            "epochs": cfg.epochs,
        })
        write_results(rows, output)  # after every model, so a long comparison leaves partial results
    plot_results(rows, output)
    return rows


def write_results(rows: list[dict], output: Path, columns: list[str] = COLUMNS, table=None) -> None:
    """``compare.json``, ``compare.csv`` (``columns``) and ``compare.md`` (``table(rows)``, by default
    :func:`markdown_table`) under ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(output / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    (output / "compare.md").write_text((table or markdown_table)(rows))


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table (``compare.md``, and what ``mambaout compare`` prints)."""
    header = ["model", "mixer", "params", "GMACs", "eval img/s", "train img/s", "top-1", "best top-1"]
    body = [[r["model"], r["token_mixer"] + (f" ({r['scan']})" if r["scan"] else ""), f"{r['params'] / 1e6:.2f}M",
             f"{r['gmacs']:.3f}", f"{r['images_per_sec']:.1f}", f"{r['train_images_per_sec']:.1f}",
             f"{r['top1']:.2f}", f"{r['best_top1']:.2f}"] for r in rows]
    return _markdown(header, body, align="llrrrrrr")


def plot_results(rows: list[dict], output: Path) -> Path:
    """Top-1 per epoch for every model, and final top-1 against eval throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.metrics_log import MetricsLog

    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        hist = [h for h in MetricsLog(output / r["model"]).rows() if "top1" in h]
        ax_curve.plot([h["epoch"] for h in hist], [h["top1"] for h in hist], marker="o", label=r["model"])
    ax_curve.set(xlabel="epoch", ylabel="val top-1 (%)", title="learning curves")
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8)
    for r in rows:
        ax_bar.scatter(r["images_per_sec"], r["top1"], s=40 + r["params"] / 1e5)
        ax_bar.annotate(r["model"].replace("mambaout_", ""), (r["images_per_sec"], r["top1"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax_bar.set(xlabel="eval images/s (this machine)", ylabel="final top-1 (%)",
               title="accuracy vs speed (marker size: params)")
    ax_bar.grid(alpha=0.3)
    fig.tight_layout()
    path = output / "compare.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------- Hypothesis 2: segment
# The convolution, the plain Mamba block, VMamba's four-way scan (the visual Mamba models of Hypothesis 2) and
# full attention; add mambaout_test_causal_attn or _ssm_bi with --models.
SEGMENT_MODELS = ["mambaout_test", "mambaout_test_ssm", "mambaout_test_ssm_cross", "mambaout_test_attn"]
SEGMENT_COLUMNS = ["task", "model", "token_mixer", "scan", "params", "gmacs", "miou", "best_miou", "aacc",
                   "images_per_sec", "train_images_per_sec", "iters"]
SEGMENT_ITERS = 1200
SEGMENT_SIZE = 128  # stage 0 and 1 of mambaout_test: 1024 and 256 tokens, above tau = 6D (96, 192)


def _eval_speed(model, size: int, batch: int = 4, runs: int = 5) -> float:
    """Median images/s of the segmenter's inference at ``size``² on this machine."""
    import statistics
    import time

    import torch

    x = torch.randn(batch, 3, size, size)
    times = []
    with torch.inference_mode():
        for i in range(runs + 2):
            start = time.perf_counter()
            model(x)
            if i >= 2:  # two warm-up passes
                times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def compare_segment(models: list[str], output: str | Path, tasks: tuple[str, ...] = ("local", "long_range"),
                    iters: int | None = None, seed: int = 0, size: int = SEGMENT_SIZE, n_train: int = 400,
                    n_val: int = 100, recipe: str = "segment_quickstart", overrides: dict | None = None,
                    data_root: str | Path | None = None) -> list[dict]:
    """Train UperNet on each of ``models`` (the backbone's mixer swapped, all else equal) on each generated task
    of :mod:`mambaout.lab.seg_tasks`; return one row per (task, model) and write them as ``compare.*``.

    The data is written once per task under ``data_root`` (default ``OUTPUT/data``) from ``seed``; the recipe,
    seed and iterations are the same for every model. Training crops are the whole image (no rescaling), so
    the marker of the long-range task is never cut away.
    """
    from ..dense.config import SegmentConfig
    from ..dense.tasks import load_dense
    from ..dense.train import train_dense
    from ..engine.config import resolve_config
    from ..models.complexity import count_macs, count_params
    from ..models.zoo import get_variant
    from .seg_tasks import make_seg_task

    output = Path(output)
    data_root = Path(data_root) if data_root else output / "data"
    rows = []
    for task in tasks:
        if not (data_root / task / "classes.txt").is_file():
            make_seg_task(data_root / task, task, n_train=n_train, n_val=n_val, size=size, seed=seed)
    plot_task_samples(data_root, tasks, output / "tasks.png")
    for task in tasks:
        data = data_root / task
        for name in models:
            given = {"model": name, "data_dir": str(data), "output": str(output / task / name), "seed": seed,
                     "iters": iters, "crop_size": size, "scale": [size, size], "ratio_range": [1.0, 1.0],
                     "eval_stride": max(1, size * 2 // 3),
                     **(overrides or {})}
            cfg = resolve_config(given, recipe=recipe, cls=SegmentConfig)
            summary = train_dense(cfg)
            trained = load_dense(output / task / name / "last.pt", "segment").model
            args = get_variant(name).args
            rows.append({
                "task": task, "model": name, "token_mixer": args.get("token_mixer", "conv"),
                "scan": (args.get("mixer_kwargs") or {}).get("scan", ""),
                "params": count_params(trained),
                "gmacs": round(count_macs(trained, (3, size, size)) / 1e9, 4),
                "miou": round(100 * summary["scores"]["mIoU"], 2), "best_miou": round(100 * summary["best"], 2),
                "aacc": round(100 * summary["scores"]["aAcc"], 2),
                "images_per_sec": round(_eval_speed(trained, size), 1),
                "train_images_per_sec": round(summary.get("train_images_per_sec", 0.0), 1),
                "iters": cfg.iters,
            })
            write_segment_results(rows, output)
    plot_segment(rows, output)
    return rows


def write_segment_results(rows: list[dict], output: Path) -> None:
    write_results(rows, output, SEGMENT_COLUMNS, segment_markdown)


def segment_markdown(rows: list[dict]) -> str:
    """One row per backbone: params, GMACs, speed, and the mIoU of each task side by side."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by_model: dict[str, dict] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["task"]] = r
    header = ["model", "mixer", "params", "GMACs", "eval img/s", "train img/s",
              *[f"mIoU {t.replace('_', '-')}" for t in tasks]]
    body = []
    for name, per in by_model.items():
        first = next(iter(per.values()))
        body.append([name, first["token_mixer"] + (f" ({first['scan']})" if first["scan"] else ""),
                     f"{first['params'] / 1e6:.2f}M", f"{first['gmacs']:.3f}", f"{first['images_per_sec']:.1f}",
                     f"{first['train_images_per_sec']:.1f}",
                     *[f"{per[t]['miou']:.2f}" if t in per else "-" for t in tasks]])
    return _markdown(header, body, align="llrrrr" + "r" * len(tasks))


def plot_task_samples(data_root: Path, tasks, path: Path, per_task: int = 4) -> Path:
    """``tasks.png``: the first validation images of each task above their label maps, to see what is asked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from .seg_tasks import CLASSES, PALETTE

    colours = np.array([(0, 0, 0), (128, 128, 128), *PALETTE], dtype=np.uint8)  # unlabelled, background, classes
    fig, axes = plt.subplots(2 * len(tasks), per_task, figsize=(1.8 * per_task, 3.7 * len(tasks)), squeeze=False)
    for t, task in enumerate(tasks):
        names = sorted((Path(data_root) / task / "images" / "validation").iterdir())[:per_task]
        for j, image in enumerate(names):
            label = np.asarray(Image.open(Path(data_root) / task / "annotations" / "validation" / image.name))
            axes[2 * t, j].imshow(Image.open(image))
            axes[2 * t + 1, j].imshow(colours[np.minimum(label, len(colours) - 1)])
        axes[2 * t, 0].set_ylabel(f"{task.replace('_', '-')}\nimage", fontsize=8)
        axes[2 * t + 1, 0].set_ylabel("label", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"labels: black unlabelled (the marker), grey {CLASSES[0]}, then {', '.join(CLASSES[1:])}",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_segment(rows: list[dict], output: Path) -> Path:
    """mIoU per backbone on each task (grouped bars), and the mIoU curves over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..engine.metrics_log import MetricsLog

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(5 + 4.2 * len(tasks), 4))
    width = 0.8 / max(len(tasks), 1)
    for j, task in enumerate(tasks):
        values = [next((r["miou"] for r in rows if r["task"] == task and r["model"] == m), np.nan) for m in models]
        axes[0].bar(np.arange(len(models)) + j * width, values, width, label=task.replace("_", "-"))
    axes[0].set_xticks(np.arange(len(models)) + width * (len(tasks) - 1) / 2)
    axes[0].set_xticklabels([m.replace("mambaout_", "") for m in models], rotation=30, ha="right", fontsize=8)
    # headroom above 100 so the legend sits over no bar
    axes[0].set(ylabel="val mIoU (%)", title="final mIoU by token mixer", ylim=(0, 118))
    axes[0].legend(fontsize=8, ncol=len(tasks), loc="upper center")
    axes[0].grid(axis="y", alpha=0.3)
    for ax, task in zip(axes[1:], tasks):
        for m in models:
            hist = [h for h in MetricsLog(output / task / m).rows() if "mIoU" in h]
            ax.plot([h["iteration"] for h in hist], [100 * h["mIoU"] for h in hist], marker="o", ms=3,
                    label=m.replace("mambaout_", ""))
        ax.set(xlabel="iteration", ylabel="val mIoU (%)", title=f"{task.replace('_', '-')} task")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = output / "compare.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["COLUMNS", "DEFAULT_MODELS", "SEGMENT_MODELS", "compare", "compare_segment", "markdown_table",
           "plot_results", "plot_segment", "plot_task_samples", "segment_markdown", "write_results",
           "write_segment_results"]
