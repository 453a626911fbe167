"""Class activation maps in one call, on pytorch-grad-cam (the ``grad-cam`` package).

pytorch-grad-cam expects a target layer whose output is an NCHW map. MambaOut's stages work channels-last
(``(B, H, W, C)``) and a ViT's blocks output token sequences, so used directly it silently averages over the wrong
axis; this module picks the layer and the reshape for the model (its issues #84, #355 and #426 are users meeting
exactly that).

``explain(predictor, images)`` returns, per image, the map (at the model's input crop), the top classes, the
explained class and an overlay picture; ``mambaout cam`` writes them to a folder. The default layer is the
deepest stage whose map is at least :data:`MIN_SIDE` positions across at the model's input size (the last stage
at 224², an earlier one for small inputs such as the 32² digits), since a 1×1 map cannot say *where*.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..utils.optional import require

METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "eigencam": "EigenCAM", "xgradcam": "XGradCAM",
           "layercam": "LayerCAM", "hirescam": "HiResCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
           "ablationcam": "AblationCAM"}
MIN_SIDE = 7


def _require_cam():
    return require("pytorch_grad_cam", "cam", why="class activation maps")


def _nhwc_to_nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def _tokens_to_nchw(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ViT block's (B, 1 + N, D) output -> (B, D, h, w): the class token dropped wherever the model puts it."""
    def reshape(t: torch.Tensor) -> torch.Tensor:
        patches = t[:, :-1] if getattr(model, "causal", False) else t[:, 1:]
        h, w = _vit_grid(model, patches.shape[1])
        return patches.reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2)

    return reshape


def _vit_grid(model: nn.Module, n: int) -> tuple[int, int]:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch and hasattr(model, "img_size"):
        grid = (model.img_size[0] // patch, model.img_size[1] // patch)
        if grid[0] * grid[1] == n:
            return grid
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"cannot lay {n} patch tokens out as a square grid; pass the layer explicitly")
    return side, side


def default_layer(model: nn.Module, img_size: int | Sequence[int]) -> str:
    """The name of the layer to explain by default (see the module docstring)."""
    if hasattr(model, "stages"):
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
        chosen = 0
        for i, info in enumerate(model.feature_info):
            side = min(-(-h // info["reduction"]), -(-w // info["reduction"]))
            if side >= MIN_SIDE:
                chosen = i
        return f"stages.{chosen}"
    if hasattr(model, "blocks"):
        # The last block's own output tokens never reach the class token the head reads; the input to its
        # attention (norm1) does, as pytorch-grad-cam's ViT example takes it.
        return f"blocks.{len(model.blocks) - 1}.norm1"
    raise TypeError(f"{type(model).__name__} is neither a MambaOut nor a ViT; pass target_layer and reshape")


def target_layer(model: nn.Module, name: str) -> tuple[nn.Module, Callable]:
    """(module, reshape transform) for ``name``: ``stages.N`` / ``stages.N.blocks.M`` of a MambaOut (channels-last
    maps), ``blocks.N`` / ``blocks.N.norm1`` of a ViT (token sequences)."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"layer {name!r} is not in {type(model).__name__}; "
                         f"try {default_layer(model, 224)!r}") from None
    if hasattr(model, "stages") and (name.startswith("stages.") or name == "stem"):
        return module, _nhwc_to_nchw
    if hasattr(model, "blocks") and name.startswith("blocks."):
        return module, _tokens_to_nchw(model)
    raise ValueError(f"layer {name!r}: explain a stage (stages.N) of a MambaOut or a block (blocks.N) of a ViT")


def _target_index(target: int | str | None, labels: Sequence[str], num_classes: int) -> int | None:
    if target is None or isinstance(target, int):
        if target is not None and not 0 <= target < num_classes:
            raise ValueError(f"target class {target} is out of range: the model has {num_classes} classes")
        return target
    if str(target).lstrip("-").isdigit():
        return _target_index(int(target), labels, num_classes)
    if target in labels:
        return list(labels).index(target)
    raise ValueError(f"target class {target!r} is neither a class index nor one of the model's labels")


def _shown_image(batch: torch.Tensor, data_config: dict) -> np.ndarray:
    """The preprocessed input as the model saw it (crop and all), back in [0, 1] RGB for the overlay."""
    mean = torch.tensor(data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(data_config["std"]).view(3, 1, 1)
    return (batch.cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def explain(predictor, images: Sequence, method: str = "gradcam", target_class: int | str | None = None,
            layer: str | None = None, topk: int = 5, image_weight: float = 0.5) -> list[dict]:
    """For each PIL image: ``{"cam"`` (H×W in [0, 1] at the model's input crop), ``"top"`` (the top-``topk``
    classes, as ``Predictor.predict`` gives them), ``"target"`` (the explained class: ``target_class``, or each
    image's top class), ``"layer"``, ``"method"``, ``"overlay"`` (a PIL image: the map over the crop)}.

    ``predictor`` is a :class:`~mambaout.infer.predict.Predictor` on the PyTorch backend (or a model, which is
    wrapped in one).
    """
    cam_mod = _require_cam()
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ..data.safe import to_rgb
    from .predict import Predictor

    if isinstance(predictor, nn.Module):
        predictor = Predictor(model=predictor)
    if predictor.backend != "torch":
        raise ValueError("class activation maps need the PyTorch model (gradients), not an ONNX file")
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    model = predictor.model
    size = predictor.data_config["input_size"][1:]
    layer = layer or default_layer(model, size)
    module, reshape = target_layer(model, layer)
    target = _target_index(target_class, predictor.labels, model.num_classes)
    batch = torch.stack([predictor.transform(to_rgb(img)) for img in images]).to(predictor.device, predictor.dtype)
    top = predictor.predict(list(images), topk=topk)
    targets = [target if target is not None else t[0]["index"] for t in top]
    with getattr(cam_mod, METHODS[method])(model=model, target_layers=[module], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in targets])
    out = []
    for i, m in enumerate(maps):
        shown = _shown_image(batch[i], predictor.data_config)
        overlay = show_cam_on_image(shown.astype(np.float32), m, use_rgb=True, image_weight=image_weight)
        out.append({"cam": m, "top": top[i], "target": {"index": targets[i], "label": predictor._label(targets[i])},
                    "layer": layer, "method": method, "overlay": Image.fromarray(overlay), "input": shown})
    return out


def _unique_stems(paths: Sequence) -> list[str]:
    from pathlib import Path

    stems, seen = [], {}
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def write_cams(predictor, paths: Sequence, output, method: str = "gradcam", target_class: int | str | None = None,
               layer: str | None = None, topk: int = 5, batch_size: int = 8,
               warn: Callable[[str], None] = print) -> dict:
    """``explain`` over image files: ``OUTPUT/<stem>_cam.png`` (overlay), ``<stem>_cam.npy`` (the map),
    ``cam.json`` (per image: top classes, explained class, files) and ``cam.png`` (a contact sheet of the first
    overlays). An unreadable image is recorded with its error and the rest go on."""
    import json
    from pathlib import Path

    from ..data.safe import load_image

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    records = []
    stems = _unique_stems(paths)
    for start in range(0, len(paths), batch_size):
        chunk, images = [], []
        for path, stem in zip(paths[start:start + batch_size], stems[start:start + batch_size]):
            try:
                images.append(load_image(path))
                chunk.append((path, stem))
            except (OSError, ValueError) as e:
                warn(f"warning: {e}; no CAM for it")
                records.append({"image": str(path), "error": str(e)})
        if not images:
            continue
        for (path, stem), res in zip(chunk, explain(predictor, images, method, target_class, layer, topk)):
            res["overlay"].save(output / f"{stem}_cam.png")
            np.save(output / f"{stem}_cam.npy", res["cam"].astype(np.float32))
            records.append({"image": str(path), "overlay": f"{stem}_cam.png", "map": f"{stem}_cam.npy",
                            "target": res["target"], "top": res["top"]})
    summary = {"model": predictor.name, "method": method, "layer": layer or default_layer(
        predictor.model, predictor.data_config["input_size"][1:]), "images": records}
    (output / "cam.json").write_text(json.dumps(summary, indent=2) + "\n")
    sheet = contact_sheet(summary, output)
    if sheet is not None:
        summary["sheet"] = sheet.name
        (output / "cam.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


SHEET_IMAGES = 24


def contact_sheet(summary: dict, output, limit: int = SHEET_IMAGES):
    """``OUTPUT/cam.png``: the first ``limit`` overlays in a grid, each titled with its top class and the class it
    explains, to look over at a glance. None (and nothing written) without matplotlib or overlays."""
    from pathlib import Path

    from PIL import Image

    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = Path(output)
    shown = [r for r in summary["images"] if "overlay" in r][:limit]
    if not shown:
        return None
    cols = min(len(shown), 8)
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, shown):
        ax.imshow(Image.open(output / r["overlay"]), interpolation="nearest")
        top = r["top"][0]
        ax.set_title(f"{top['label'][:14]} {top['prob']:.0%}\n→ {r['target']['label'][:14]}", fontsize=7)
    fig.suptitle(f"{summary['method']} on {summary['layer']} of {summary['model']}", fontsize=9)
    fig.tight_layout()
    path = output / "cam.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["METHODS", "MIN_SIDE", "contact_sheet", "default_layer", "explain", "target_layer", "write_cams"]
