"""Per-epoch metrics: appended to JSON-lines and CSV files, and drawn as a PNG of loss and accuracy curves."""
from __future__ import annotations

import csv
import json
from pathlib import Path


class MetricsLog:
    def __init__(self, folder: Path, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self.jsonl = self.folder / "metrics.jsonl"
        self.csv = self.folder / "metrics.csv"

    def rows(self) -> list[dict]:
        if not self.jsonl.is_file():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        rows = self.rows()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.csv, "w", newline="") as f:  # rewritten whole: columns may grow (e.g. EMA)
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    def plot(self, path: Path | None = None, x_key: str = "epoch",
             loss_keys: tuple = (("train_loss", "train loss"), ("val_loss", "val loss")),
             score_keys: tuple = (("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1")),
             score_label: str = "accuracy (%)") -> Path | None:
        """Loss curves and validation scores against ``x_key`` (epoch, or iteration for dense tasks), written
        to ``curves.png``."""
        if not self.enabled:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        if not rows:
            return None
        path = path or self.folder / "curves.png"
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        for ax, keys in ((ax_loss, loss_keys), (ax_acc, score_keys)):
            for key, label in keys:
                pts = [(r[x_key], r[key]) for r in rows if r.get(key) is not None and x_key in r]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=label)
        ax_loss.set(xlabel=x_key, ylabel="loss", title="loss")
        ax_acc.set(xlabel=x_key, ylabel=score_label, title="validation")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.tight_layout()
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(path)
        return path
