"""The effective receptive field (ERF) of a model's stage: which input pixels its central position listens to.

The method is RepLKNet's (Ding et al., CVPR 2022): for each image, take the gradient of the central position of
stage N's output map, summed over channels, with respect to the input; take absolute values, sum over the
colour channels and average over the images. That aggregated map (``erf_<model>.npy``) is kept as it is; for display and
for RepLKNet's area measure it is log-scaled and normalised, ``log10(1 + map) / max``.

The area measure: for t = 20/30/50/99%, the smallest square around the image centre that holds t of the total,
as a fraction of the image area (``area_ratio``; ``area_ratio_raw`` is the same measure on the unscaled map).

The theoretical receptive field is worked out exactly for networks whose spatial operations are all
convolutions (MambaOut's depthwise-conv mixer): the box of input pixels the central position can depend on at
all. Any other token mixer (an SSM scan, attention) or a module this file does not know has none: it may reach
anywhere.

Library: :func:`erf_map`, :func:`theoretical_rf`, :func:`area_ratios`, :func:`display_map`,
:func:`load_erf_images`, :func:`analyze_erf` (what ``mambaout erf`` runs), :func:`plot_erf`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
DEFAULT_IMAGES = 50
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera",
          "coins", "moon", "page", "text", "clock", "brick", "grass", "gravel", "horse", "colorwheel", "logo")


# ------------------------------------------------------------------------------------------------ the map
def stage_output(model: nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
    """Stage ``stage`` (a block for a ViT) of ``model`` as an NCHW map; negative counts from the end."""
    if not hasattr(model, "forward_intermediates"):
        raise TypeError(f"{type(model).__name__} has no forward_intermediates(); the ERF needs a stage's map")
    levels = len(getattr(model, "stages", None) or getattr(model, "blocks", []))
    if levels and not -levels <= stage < levels:
        raise ValueError(f"stage {stage} does not exist: the model has {levels} (0..{levels - 1}, or -1 for the last)")
    return model.forward_intermediates(x, indices=[stage], intermediates_only=True)[0]


def erf_map(model: nn.Module, batches: Iterable[torch.Tensor], stage: int = -1,
            on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """The aggregated ERF map at input size: the mean over images of |∂ Σ_c out[c, h//2, w//2] / ∂ input|, summed
    over the input's channels. RepLKNet averages too, so the display scaling means the same for any image count.
    ``batches`` yields (B, 3, H, W) tensors already preprocessed for the model.

    The model runs in eval mode (so images do not interact through batch statistics) and float64 accumulates.
    """
    was_training = model.training
    model.eval()
    total, count = None, 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for batch in batches:
            x = batch.to(device=device, dtype=torch.float32).requires_grad_(True)
            out = stage_output(model, x, stage)
            h, w = out.shape[-2:]
            centre = out[:, :, h // 2, w // 2].sum()
            (grad,) = torch.autograd.grad(centre, x)
            contrib = grad.abs().sum(dim=(0, 1)).double().cpu().numpy()
            total = contrib if total is None else total + contrib
            count += x.shape[0]
            if on_batch is not None:
                on_batch(x.shape[0])
    finally:
        model.train(was_training)
    if total is None:
        raise ValueError("no images to measure the ERF on")
    return total / count


def display_map(erf: np.ndarray) -> np.ndarray:
    """RepLKNet's display scaling: log10(1 + map), divided by its maximum (all zeros stay zeros)."""
    scaled = np.log10(1.0 + np.asarray(erf, dtype=np.float64))
    top = scaled.max()
    return scaled / top if top > 0 else scaled


def area_ratios(erf: np.ndarray, thresholds: Sequence[float] = THRESHOLDS,
                centre: Sequence[int] | None = None) -> dict[str, float]:
    """For each t, the area (as a fraction of the image) of the smallest square centred on ``centre`` (row,
    column; default the image centre) that holds at least t of the map's total; squares are clipped at the image
    border."""
    erf = np.asarray(erf, dtype=np.float64)
    H, W = erf.shape
    total = erf.sum()
    integral = np.zeros((H + 1, W + 1))
    integral[1:, 1:] = erf.cumsum(0).cumsum(1)
    cy, cx = (H // 2, W // 2) if centre is None else (int(centre[0]), int(centre[1]))
    out = {}
    for t in thresholds:
        if total <= 0:
            out[f"{t:g}"] = float("nan")
            continue
        for r in range(2 * max(H, W)):
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, H), max(cx - r, 0), min(cx + r + 1, W)
            held = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            if held >= t * total * (1 - 1e-12):
                out[f"{t:g}"] = (y1 - y0) * (x1 - x0) / (H * W)
                break
    return out


# ------------------------------------------------------------------------------------------ theoretical RF
def _spatial_ops(module: nn.Module, skip_mixers: bool = False) -> list[tuple] | None:
    """The convolutions of ``module`` in the order its forward runs them, as (k, s, p, d) per axis pairs; None if
    something in it mixes positions in a way other than a convolution (or is not known to this function).

    ``skip_mixers``: leave the blocks' token mixers out (what remains, the stem and downsampling convolutions,
    places each output position on the input)."""
    from timm.layers import DropPath, LayerNorm, LayerScale

    from ..models.mambaout import Downsample, GatedCNNBlock, MambaOutStage, Stem

    pointwise = (nn.Linear, nn.LayerNorm, LayerNorm, LayerScale, DropPath, nn.Identity, nn.Dropout, nn.GELU,
                 nn.SiLU, nn.ReLU)
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            return None
        return [tuple(zip(module.kernel_size, module.stride, module.padding, module.dilation))]
    if isinstance(module, pointwise):
        return []
    # Containers whose forward is known to call their children in registration order and to mix positions only
    # through them.
    if isinstance(module, (nn.Sequential, Stem, Downsample, GatedCNNBlock, MambaOutStage)):
        ops = []
        for name, child in module.named_children():
            if skip_mixers and isinstance(module, GatedCNNBlock) and name == "conv":
                continue
            found = _spatial_ops(child, skip_mixers)
            if found is None:
                return None
            ops += found
        return ops
    return None


def _size2(img_size: int | Sequence[int]) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[-1]))


def _stage_ops(model: nn.Module, stage: int, skip_mixers: bool = False) -> list[tuple] | None:
    stages, stem = getattr(model, "stages", None), getattr(model, "stem", None)
    if stages is None or stem is None:
        return None
    return _spatial_ops(nn.Sequential(stem, *list(stages)[:stage % len(stages) + 1]), skip_mixers)


def _span(ops: list[tuple], n: int, axis: int) -> tuple[int, int]:
    """The input interval (unclipped) that the central output position along ``axis`` reads through ``ops``."""
    for op in ops:  # the map's size along this axis, through every convolution
        k, s, p, d = op[axis]
        n = (n + 2 * p - d * (k - 1) - 1) // s + 1
    lo = hi = n // 2
    for op in reversed(ops):  # back to the input: output index i reads inputs i·s − p … i·s − p + d(k − 1)
        k, s, p, d = op[axis]
        lo, hi = lo * s - p, hi * s - p + d * (k - 1)
    return lo, hi


def erf_centre(model: nn.Module, stage: int, img_size: int | Sequence[int]) -> tuple[int, int]:
    """The input pixel (row, column) under the central position of stage ``stage``: the centre of what the stem
    and downsampling convolutions (or a ViT's patches) map onto it. With stride-2 convolutions this is not the
    image centre: the central cell of a 7×7 stride-32 map at 224² sits over pixel 96, not 112."""
    size = _size2(img_size)
    ops = _stage_ops(model, stage, skip_mixers=True)
    if ops is not None:
        return tuple(sum(_span(ops, size[axis], axis)) // 2 for axis in range(2))
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        ph, pw = _size2(patch)
        return ((size[0] // ph) // 2 * ph + (ph - 1) // 2, (size[1] // pw) // 2 * pw + (pw - 1) // 2)
    return size[0] // 2, size[1] // 2


def theoretical_rf(model: nn.Module, stage: int, img_size: int | Sequence[int]) -> dict | None:
    """The exact box of input pixels the central position of stage ``stage`` can depend on, or None when the
    network up to that stage has a mixer that reaches beyond any box (an SSM, attention, a ViT).

    Returns ``{"box": [top, left, bottom, right]`` (inclusive, clipped to the image), ``"size": [h, w]`` (of the
    clipped box), ``"side"`` (the unclipped side in pixels), ``"area_ratio"`` (clipped box / image)}.
    """
    ops = _stage_ops(model, stage)
    if ops is None:
        return None
    size = _size2(img_size)
    spans = [_span(ops, size[axis], axis) for axis in range(2)]
    side = [hi - lo + 1 for lo, hi in spans]
    (top, bottom), (left, right) = ((max(lo, 0), min(hi, n - 1)) for (lo, hi), n in zip(spans, size))
    h, w = bottom - top + 1, right - left + 1
    return {"box": [top, left, bottom, right], "size": [h, w], "side": side[0] if side[0] == side[1] else side,
            "area_ratio": h * w / (size[0] * size[1])}


def _no_rf_reason(model: nn.Module) -> str:
    if not hasattr(model, "stages"):
        return "global attention from the first block: every patch can reach every other"
    mixers = {type(b.conv).__name__ for s in model.stages for b in s.blocks}
    return f"its token mixer ({', '.join(sorted(mixers))}) can reach beyond any box"


# --------------------------------------------------------------------------------------------- the images
def _photos(limit: int) -> list:
    from PIL import Image

    from ..utils.optional import require

    data = require("skimage", why="the default ERF images (scikit-image's photographs)").data
    out = []
    for name in PHOTOS[:limit]:
        try:
            out.append((name, Image.fromarray(getattr(data, name)())))
        except Exception:  # a photograph this scikit-image does not bundle
            continue
    return out


def load_erf_images(folder: str | Path | None, limit: int = DEFAULT_IMAGES,
                    warn: Callable[[str], None] = print) -> list:
    """(name, PIL image) pairs: the first ``limit`` images under ``folder`` (recursively, sorted), or scikit-image's
    bundled photographs when no folder is given. An unreadable file is named and left out."""
    if folder is None:
        return _photos(limit)
    from ..data.safe import load_image
    from ..infer.predict import expand_inputs

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--images {folder}: not a folder of images")
    out = []
    for path in expand_inputs([folder]):
        if len(out) >= limit:
            break
        try:
            out.append((str(path), load_image(path)))
        except (OSError, ValueError) as e:
            warn(f"warning: {e}; left out of the ERF")
    if not out:
        raise ValueError(f"--images {folder}: no readable images found")
    return out


def _batches(images: list, transform, batch_size: int):
    from ..data.safe import to_rgb

    for i in range(0, len(images), batch_size):
        yield torch.stack([transform(to_rgb(img)) for _, img in images[i:i + batch_size]])


# ------------------------------------------------------------------------------------------ whole analysis
def _dense_backbone(checkpoint: str | None) -> nn.Module | None:
    """The MambaOut inside a detector/segmenter checkpoint of ``mambaout detect|segment train``, else None."""
    from ..dense.tasks import _is_dense_checkpoint, load_dense

    data = _is_dense_checkpoint(checkpoint)
    if data is None:
        return None
    body = load_dense(checkpoint, data["task"]).model.backbone.body
    body.pretrained_cfg = {**body.pretrained_cfg, "architecture": data.get("model_name")}
    return body


def _build(name: str | None, checkpoint: str | None, pretrained: bool, img_size: int) -> nn.Module:
    from ..models import model_from_source
    from ..models.zoo import get_variant

    backbone = _dense_backbone(checkpoint)
    if backbone is not None:
        return backbone
    extra = {}
    if name is not None and get_variant(name.split(".")[0]).builder == "vit" and checkpoint is None:
        extra["img_size"] = img_size  # a ViT is built for one input size
    return model_from_source(name, pretrained=pretrained, checkpoint_path=checkpoint, **extra)


def analyze_erf(models: Sequence[str | None], output: str | Path, checkpoints: Sequence[str | None] | None = None,
                pretrained: bool = False, images: str | Path | None = None, num_images: int = DEFAULT_IMAGES,
                stage: int = -1, img_size: int = 224, batch_size: int = 8, device: str = "cpu",
                progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Measure every model's ERF on the same images; write ``erf_<model>.npy``, ``erf.json`` and ``erf.png`` under
    ``output`` and return what ``erf.json`` holds.

    ``models`` are names (None where ``checkpoints`` records it); ``checkpoints`` one file or None per model: a
    classifier in any layout, or a detector/segmenter of ``mambaout detect|segment train`` (its backbone).
    Every model sees the same images, each preprocessed by its own eval transform at ``img_size``.
    """
    from ..data.transforms import create_eval_transform, resolve_data_config
    from ..utils.progress import Progress

    checkpoints = list(checkpoints) if checkpoints else [None] * len(models)
    if len(checkpoints) != len(models):
        raise ValueError(f"{len(models)} models but {len(checkpoints)} checkpoints: give one checkpoint per model")
    photos = load_erf_images(images, num_images, warn=log)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results, maps = {}, {}
    for name, ckpt in zip(models, checkpoints):
        model = _build(name, ckpt, pretrained, img_size).to(device)
        label = name or model.pretrained_cfg.get("architecture", Path(ckpt).stem)
        if label in results:
            label = f"{label}_{len(results)}"
        cfg = resolve_data_config(model, {"input_size": (3, img_size, img_size), "crop_pct": 1.0})
        bar = Progress(len(photos), f"erf {label}", every=None, enabled=progress, unit="image")
        erf = erf_map(model, _batches(photos, create_eval_transform(cfg), batch_size), stage, on_batch=bar.tick)
        bar.close()
        np.save(output / f"erf_{_file_name(label)}.npy", erf.astype(np.float32))
        rf = theoretical_rf(model, stage, img_size)
        centre = erf_centre(model, stage, img_size)
        results[label] = {
            "model": model.pretrained_cfg.get("architecture", name), "checkpoint": ckpt,
            "weights": "checkpoint" if ckpt else ("pretrained" if pretrained else "random initialisation"),
            "stage": _levels(model, stage), "img_size": img_size, "images": len(photos), "centre": list(centre),
            "area_ratio": area_ratios(display_map(erf), centre=centre),
            "area_ratio_raw": area_ratios(erf, centre=centre),
            "theoretical_rf": rf, "rf_note": None if rf else _no_rf_reason(model),
            "nonzero_fraction": float((erf > 0).mean()),
        }
        maps[label] = erf
        log(f"{label}: " + ", ".join(f"t={float(t):.0%} {r:.3f}" for t, r in results[label]["area_ratio"].items()))
    summary = {"method": "RepLKNet: |d(sum_c centre of stage output)/d input|, averaged over images; area ratios on "
                         "log10(1+map)/max (area_ratio_raw: on the map itself)",
               "thresholds": list(THRESHOLDS), "models": results}
    (output / "erf.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_erf(maps, results, output / "erf.png")
    return summary


def _levels(model: nn.Module, stage: int) -> int:
    levels = len(getattr(model, "stages", None) or getattr(model, "blocks", None) or [0])
    return stage % levels


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def plot_erf(maps: dict[str, np.ndarray], results: dict[str, dict], path: str | Path) -> Path:
    """One panel per model, side by side: the display-scaled map, its t=20%/50% squares and the theoretical RF."""
    from ..utils.optional import require

    matplotlib = require("matplotlib", why="the ERF plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(maps)
    cols = n if n <= 6 else 4
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (label, erf) in zip(axes.flat, maps.items()):
        res = results[label]
        shown = display_map(erf)
        H, W = shown.shape
        im = ax.imshow(shown, cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
        cy, cx = res.get("centre") or (H // 2, W // 2)
        for t, style in (("0.2", "-"), ("0.5", "--")):
            ratio = res["area_ratio"].get(t)
            if ratio and ratio == ratio:
                side = math.sqrt(ratio * H * W)  # the square's side before clipping is not kept; near enough
                ax.add_patch(Rectangle((cx - side / 2, cy - side / 2), side, side, fill=False, ec="black",
                                       ls=style, lw=1, label=f"t={float(t):.0%}: {ratio:.3f}"))
        rf = res["theoretical_rf"]
        if rf:
            top, left, bottom, right = rf["box"]
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1, fill=False,
                                   ec="blue", ls=":", lw=1.5, label="theoretical RF"))
        ax.set_title(label.replace("mambaout_", ""), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, loc="lower right", framealpha=0.7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="log10(1 + |grad|), normalised")
    first = next(iter(results.values()))
    fig.suptitle(f"Effective receptive field, stage {first['stage']}, {first['img_size']}² input, "
                 f"{first['images']} images ({first['weights']})", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["DEFAULT_IMAGES", "PHOTOS", "THRESHOLDS", "analyze_erf", "area_ratios", "display_map", "erf_centre",
           "erf_map",
           "load_erf_images", "plot_erf", "stage_output", "theoretical_rf"]
