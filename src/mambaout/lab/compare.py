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


def write_results(rows: list[dict], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(output / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (output / "compare.md").write_text(markdown_table(rows))


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


__all__ = ["COLUMNS", "DEFAULT_MODELS", "compare", "markdown_table", "plot_results", "write_results"]
