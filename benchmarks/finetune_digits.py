"""Fine-tuning on real data nobody has seen: MambaOut-Femto pretrained on digits 0-4, then taught digits 5-9 from
only a few images per class, five ways.

1. pretrain ``mambaout_femto`` on digits 0-4 (all 721 training images) with the ``quickstart`` recipe;
2. on digits 5-9 with ``--per-class`` training images each (validated on all 180 of their validation images):
   - from scratch (the ``quickstart`` recipe, the same epochs);
   - full fine-tune from the 0-4 weights (the ``finetune`` recipe without layer decay);
   - fine-tune with layer decay (the ``finetune`` recipe as packaged, 0.75);
   - linear probe (``--linear-probe``: the classifier alone, on features computed once);
   - distillation: a ``mambaout_tiny`` teacher trained on all of 5-9, distilled into femto trained from scratch on
     the few images (soft, T 2).

Every run uses the same seed, epochs and batch; the table gives best validation top-1, epochs and wall time.

    python benchmarks/finetune_digits.py [--per-class 10] [--epochs 30] [--output runs/finetune_digits]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table  # noqa: E402


def run(name: str, out: Path, recipe: str, **settings) -> dict:
    from mambaout.classify.config import resolve_config
    from mambaout.classify.train import train

    note = settings.pop("note", None)
    t0 = time.perf_counter()
    cfg = resolve_config({"output": str(out / name), "workers": 0, "log_interval": 10_000, **settings},
                         recipe=recipe)
    summary = train(cfg)
    return {"run": name, "recipe": recipe + (f" + {note}" if note else ""), "top1": round(summary["best_top1"], 2),
            "epochs": cfg.epochs, "seconds": round(time.perf_counter() - t0, 1)}


def experiment(out: Path, per_class: int, epochs: int, batch: int) -> list[dict]:
    from mambaout.data.digits import export_digits

    data = {"pre": out / "data" / "digits_0-4", "few": out / "data" / f"digits_5-9_{per_class}",
            "all59": out / "data" / "digits_5-9"}
    for key, kw in (("pre", dict(classes=range(5))), ("few", dict(classes=range(5, 10), train_per_class=per_class)),
                    ("all59", dict(classes=range(5, 10)))):
        if not (data[key] / "train").is_dir():
            export_digits(data[key], **kw)
    common = {"model": "mambaout_femto", "epochs": epochs, "batch_size": batch, "img_size": 32}
    pre = run("pretrain_0-4", out, "quickstart", model="mambaout_femto", data_dir=str(data["pre"]))
    weights = str(out / "pretrain_0-4" / "best.pt")
    teacher = run("teacher_tiny_5-9", out, "quickstart", model="mambaout_tiny", data_dir=str(data["all59"]))
    few = {"data_dir": str(data["few"]), **common}
    rows = [
        run("scratch", out, "quickstart", **few, warmup_epochs=1),
        run("finetune", out, "finetune", **few, checkpoint=weights, layer_decay=None, lr=FT_LR,
            note="no layer decay"),
        run("finetune_layer_decay", out, "finetune", **few, checkpoint=weights, lr=FT_LR),
        run("linear_probe", out, "finetune", **few, checkpoint=weights, linear_probe=True, lr=PROBE_LR,
            note="--linear-probe"),
        run("distilled", out, "quickstart", **few, warmup_epochs=1, teacher=str(out / "teacher_tiny_5-9" / "best.pt"),
            distill_temperature=2.0, note="tiny teacher"),
    ]
    pre["recipe"] += " (pretraining on 0-4, 721 images)"
    teacher["recipe"] += " (the teacher, all 716 images of 5-9)"
    return [pre, teacher, *rows]


# The finetune recipe's per-batch lr (1e-4 per 256 images) is for ImageNet-size transfer; at a batch of 16 it
# gives 6e-6, which a fresh head at 0.001 scale hardly moves in 90 steps. The demonstration fixes the lr instead
# (measured: 5e-4 for the fine-tunes, 5e-3 for the probe's single layer).
FT_LR = 5e-4
PROBE_LR = 5e-3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--output", default="runs/finetune_digits")
    args = p.parse_args()
    out = Path(args.output)
    rows = experiment(out, args.per_class, args.epochs, args.batch)
    (out / "finetune_digits.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(header(f"{torch.get_num_threads()} threads, digits 5-9 with {args.per_class} training images per class"))
    print(table(["run", "recipe", "best top-1 (180 val images)", "epochs", "seconds"],
                [[r["run"], r["recipe"], f"{r['top1']:.2f}", r["epochs"], r["seconds"]] for r in rows]))


if __name__ == "__main__":
    main()
