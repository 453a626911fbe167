"""The paper's long-sequence test: when is attention, not the linear layers, the cost of a Transformer block?

One Transformer block (MLP ratio 4) over L tokens of width D costs (Eq. 6, FLOPs = 2 × multiply-adds)

    24·D²·L   in its linear layers (qkv 3·D², output projection D², MLP 8·D², per token)
    4·D·L²    in attention (q·kᵀ and attn·v, D·L² multiply-adds each)

so the ratio of the two is r_L = 4·D·L² / (24·D²·L) = L / (6·D): the sequence is *long*, and a token mixer linear
in L (an SSM) pays off, once L > 6·D. For ViT-S (D = 384) that is tau_small = 2304 tokens, for ViT-B (D = 768)
tau_base = 4608. ImageNet at 224² and patch 16 has 196 tokens, far below either; COCO (800×1280: 4000) and
ADE20K (512×2048: 4096) exceed tau_small.

Library: :func:`tokens`, :func:`block_flops`, :func:`long_sequence_ratio`, :func:`threshold`,
:func:`is_long_sequence`, :func:`stage_rows`, :func:`analyze`, :func:`plot_ratio`. Its text form:
:func:`format_report` (``mambaout analyze``, in :mod:`mambaout.cli.lab`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..utils.optional import require
from ..utils.tables import text_table

TASKS: dict[str, tuple[int, int]] = {"imagenet": (224, 224), "coco": (800, 1280), "ade20k": (512, 2048)}
VIT_SIZES: dict[str, int] = {"ViT-S": 384, "ViT-B": 768}
TAU_SMALL = 6 * VIT_SIZES["ViT-S"]  # 2304
TAU_BASE = 6 * VIT_SIZES["ViT-B"]  # 4608
DEFAULT_MODEL = "mambaout_tiny"


def tokens(h: int, w: int, patch: int = 16) -> int:
    """Tokens of an h×w image cut into patch×patch pieces; a partial patch at an edge counts (padded)."""
    if min(h, w, patch) < 1:
        raise ValueError(f"image size and patch size must be positive, got {h}×{w} and {patch}")
    return math.ceil(h / patch) * math.ceil(w / patch)


def threshold(dim: int) -> int:
    """tau = 6·D: the token count where attention starts to cost more than the linear layers."""
    return 6 * dim


def long_sequence_ratio(num_tokens: int, dim: int) -> float:
    """r_L = L / (6·D), also attention FLOPs / linear-layer FLOPs of one block."""
    return num_tokens / threshold(dim)


def is_long_sequence(num_tokens: int, dim: int) -> bool:
    return num_tokens > threshold(dim)


def block_flops(num_tokens: int, dim: int) -> dict:
    """Eq. 6 for one Transformer block: FLOPs of its linear layers and its attention, and their shares."""
    linear = 24 * dim * dim * num_tokens
    attention = 4 * dim * num_tokens * num_tokens
    total = linear + attention
    return {"linear": linear, "attention": attention, "total": total,
            "linear_share": linear / total, "attention_share": attention / total}


def _row(name: str, num_tokens: int, dim: int) -> dict:
    return {"name": name, "dim": dim, "tokens": num_tokens, "tau": threshold(dim),
            "r_L": long_sequence_ratio(num_tokens, dim), "long_sequence": is_long_sequence(num_tokens, dim),
            "flops": block_flops(num_tokens, dim)}


def model_stages(model: str = DEFAULT_MODEL) -> list[tuple[int, int]]:
    """(stride, channels) of each feature level of ``model``, read from a meta-device build (nothing allocated).

    Levels of equal stride and width (a ViT's blocks) collapse into one.
    """
    from ..models import create_model

    net = create_model(model, device="meta")
    levels = []
    for f in net.feature_info:
        level = (int(f["reduction"]), int(f["num_chs"]))
        if level not in levels:
            levels.append(level)
    return levels


def stage_rows(h: int, w: int, levels: Sequence[tuple[int, int]]) -> list[dict]:
    """Tokens, width, r_L and verdict of each (stride, channels) feature level at an h×w input.

    A stride-2 conv with padding 1 halves a side rounding up, so a level of stride s has ceil(h/s)×ceil(w/s)
    positions.
    """
    rows = []
    for i, (stride, dim) in enumerate(levels):
        gh, gw = math.ceil(h / stride), math.ceil(w / stride)
        row = _row(f"stage {i}", gh * gw, dim)
        rows.append({"stage": i, "stride": stride, "size": [gh, gw], **row})
    return rows


VERDICT_RULE = (f"a task is long-sequence when L > tau_small = {TAU_SMALL} (6D at ViT-S's width); the paper reads "
                f"L near tau_base = {TAU_BASE} (ViT-B's) as long too, e.g. COCO's 4000 and ADE20K's 4096 tokens")


def task_verdict(num_tokens: int) -> dict:
    """The paper's verdict on a whole task at ``num_tokens`` (ImageNet 196: short; COCO 4000, ADE20K 4096: long),
    beside the strict per-width ``L > 6D`` of the tables: the rule, the verdict and how close L is to tau_base."""
    return {"long_sequence": num_tokens > TAU_SMALL, "tokens": num_tokens,
            "of_tau_small": num_tokens / TAU_SMALL, "of_tau_base": num_tokens / TAU_BASE, "rule": VERDICT_RULE}


def analyze(img_size: int | Sequence[int] = 224, patch_size: int = 16, dim: int | None = None,
            task: str | None = None, model: str | None = DEFAULT_MODEL) -> dict:
    """The whole analysis as one JSON-ready dict.

    ``task`` (imagenet, coco, ade20k) sets the image size in place of ``img_size``. ``vit`` rows cover ViT-S and
    ViT-B widths (and ``dim`` if given) at ``patch_size``; ``stages`` rows cover each stage of ``model``.
    """
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        img_size = TASKS[task]
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    num_tokens = tokens(h, w, patch_size)
    widths = dict(VIT_SIZES)
    if dim is not None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if dim not in widths.values():
            widths[f"D={dim}"] = dim
    out = {
        "img_size": [h, w],
        "task": task,
        "patch_size": patch_size,
        "grid": [math.ceil(h / patch_size), math.ceil(w / patch_size)],
        "tokens": num_tokens,
        "thresholds": {"tau_small": TAU_SMALL, "tau_base": TAU_BASE},
        "vit": [_row(name, num_tokens, d) for name, d in widths.items()],
        "verdict": task_verdict(num_tokens),
        "model": model,
        "stages": stage_rows(h, w, model_stages(model)) if model else [],
    }
    return out


def _sides(lo: int = 112, hi: int = 1536, step: int = 16) -> list[int]:
    return list(range(lo, hi + 1, step))


def plot_ratio(path: str | Path, model: str | None = DEFAULT_MODEL, patch_size: int = 16,
               dims: Sequence[int] = (384, 768), mark: tuple[int, int] | None = None,
               sides: Sequence[int] | None = None) -> Path:
    """Write a PNG of r_L against image size: patch-``patch_size`` ViTs of widths ``dims`` and ``model``'s stages.

    The x axis is the side of a square image; a non-square h×w size (the three task sizes, ``mark``) is placed at
    √(h·w), the square of equal area, which at one stride has about the same token count. r_L = 1 (L = 6·D) is
    drawn as the threshold line.
    """
    matplotlib = require("matplotlib", why="plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = list(sides) if sides is not None else _sides()
    levels = model_stages(model) if model else []
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for d in dims:
        ax.plot(sides, [long_sequence_ratio(tokens(s, s, patch_size), d) for s in sides], lw=2,
                label=f"ViT, patch {patch_size}, D={d} (tau={threshold(d)})")
    # COCO and ADE20K sit at almost the same area: distinct markers, one legend entry each, no text labels.
    for (task, (th, tw)), marker in zip(TASKS.items(), "os^"):
        n = tokens(th, tw, patch_size)
        ax.plot([math.sqrt(th * tw)] * len(dims), [long_sequence_ratio(n, d) for d in dims], marker, ms=7,
                color="black", mfc="none", label=f"{task} {th}×{tw}: L={n}")
    for i, (stride, d) in enumerate(levels):
        ax.plot(sides, [long_sequence_ratio(tokens(s, s, stride), d) for s in sides], "--", lw=1,
                label=f"{model} stage {i} (stride {stride}, D={d})")
    ax.axhline(1.0, color="red", lw=1.2, label="r_L = 1 (L = 6·D)")
    if mark is not None:
        ax.axvline(math.sqrt(mark[0] * mark[1]), color="gray", ls=":", lw=1, label=f"{mark[0]}×{mark[1]}")
    ax.set_yscale("log")
    ax.set_xlabel("image side in pixels (non-square h×w at √(h·w))")
    ax.set_ylabel("r_L = L / (6·D)  (attention / linear FLOPs)")
    ax.set_title("Long-sequence ratio of one attention block (MambaOut, Eq. 6)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ report
def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_report(result: dict) -> str:
    """The text form of :func:`analyze`'s result."""
    h, w = result["img_size"]
    gh, gw = result["grid"]
    task = f" ({result['task']})" if result["task"] else ""
    lines = [
        f"Image {h}×{w}{task}, patch {result['patch_size']}: {gh}×{gw} = {result['tokens']} tokens",
        "One Transformer block (Eq. 6): FLOPs = 24·D²·L (linear layers) + 4·D·L² (attention);",
        "r_L = L / (6·D); long sequence when L > 6·D "
        f"(tau_small = {result['thresholds']['tau_small']}, tau_base = {result['thresholds']['tau_base']})",
        "",
    ]
    vit_rows = [[r["name"], str(r["dim"]), str(r["tau"]), f"{r['flops']['linear'] / 1e9:.3f}",
                 f"{r['flops']['attention'] / 1e9:.3f}", f"{100 * r['flops']['attention_share']:.1f}%",
                 f"{r['r_L']:.3f}", _yes(r["long_sequence"])] for r in result["vit"]]
    lines += text_table(vit_rows, ["width", "D", "tau=6D", "linear GFLOPs", "attention GFLOPs", "attention share",
                                   "r_L", "long sequence"], indent="  ")
    v = result["verdict"]
    lines += ["", f"Verdict: {'long' if v['long_sequence'] else 'short'}-sequence task (L = {v['tokens']} is "
                  f"{v['of_tau_small']:.2f}× tau_small, {v['of_tau_base']:.2f}× tau_base)", f"  rule: {v['rule']}"]
    if result["stages"]:
        lines += ["", f"Stages of {result['model']} at {h}×{w} (an attention block at each stage's width):"]
        stage_rows_ = [[str(r["stage"]), str(r["stride"]), f"{r['size'][0]}×{r['size'][1]}", str(r["tokens"]),
                        str(r["dim"]), str(r["tau"]), f"{r['r_L']:.3f}", _yes(r["long_sequence"])]
                       for r in result["stages"]]
        lines += text_table(stage_rows_, ["stage", "stride", "size", "tokens", "D", "tau=6D", "r_L", "long sequence"],
                            indent="  ")
    if result.get("plot"):
        lines += ["", f"plot written to {result['plot']}"]
    return "\n".join(lines)


__all__ = [
    "DEFAULT_MODEL", "TASKS", "TAU_BASE", "TAU_SMALL", "VIT_SIZES", "analyze", "block_flops", "format_report",
    "is_long_sequence", "long_sequence_ratio", "model_stages", "plot_ratio", "stage_rows", "task_verdict",
    "threshold", "tokens", "VERDICT_RULE",
]
