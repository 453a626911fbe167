"""Top-1 / top-5 / loss / throughput of a classifier on an ImageFolder split, shards or a Hugging Face dataset,
on one process or many."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.folder import build_eval_loader, load_image_folder
from ..engine import distributed as D
from ..utils.amp import autocast
from ..utils.errors import ConfigError

# The folder helpers lived here first; callers that import them from here keep working.
__all__ = ["build_eval_loader", "evaluate", "evaluate_model", "load_image_folder"]


def _expected_images(loader) -> int:
    """How many images ``loader`` would give if none were skipped (this rank's share)."""
    if callable(getattr(loader.dataset, "expected", None)):  # a shard stream: its pieces of the shards
        return loader.dataset.expected()
    sampler = getattr(loader.batch_sampler, "sampler", None)
    sampler = loader.sampler if sampler is None else sampler
    try:
        return len(sampler)
    except TypeError:
        return len(loader.dataset)


@torch.no_grad()
def evaluate(model, loader: DataLoader, info: D.DistInfo, amp: str = "none") -> dict:
    """Accuracies in percent (as timm reports them), mean cross-entropy, image count, images/s, and ``skipped``:
    the images whose file could not be read (batches from ``collate_skip`` leave them out, or are ``None``)."""
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    cast = autocast(amp, info.device)
    expected = _expected_images(loader)
    t0 = time.perf_counter()
    for batch in loader:
        if batch is None:
            continue
        images, targets = batch
        images, targets = images.to(info.device), targets.to(info.device)
        with cast:
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += targets.numel()
    if info.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    skipped = max(0, expected - count)
    correct1, correct5, loss_sum, count, elapsed, skipped = D.all_reduce_sum(
        [correct1, correct5, loss_sum, count, elapsed, skipped], info)
    if count == 0:
        raise ConfigError("the evaluation split holds no readable images" if skipped else
                          "the evaluation split holds no images")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "images": int(count), "images_per_sec": count / (elapsed / info.world_size), "skipped": int(skipped)}


def evaluate_model(model, data_dir: str | Path, batch_size: int = 64, workers: int = 2, amp: str = "none",
                   device: str = "auto", strict: bool = False, image_column: str | None = None,
                   label_column: str | None = None, test_size: bool = False) -> dict:
    """Evaluate ``model`` on ``data_dir`` (a ``<class>/<images>`` folder, a shard spec or ``hf:PATH``, see
    ``data.sources``) with the model's own preprocessing, each image once over the ranks; unreadable images are
    skipped with a warning and counted in ``skipped`` (``strict``: ``DataFileError`` instead). ``test_size``: at
    the pretrained cfg's ``test_input_size`` and ``test_crop_pct``, as timm's re-evaluation at 288 does. The result
    records the ``input_size`` and ``crop_pct`` used."""
    from ..data.sources import build_loader, open_data
    from ..data.transforms import create_eval_transform, resolve_data_config

    info = D.setup(device)
    data_cfg = resolve_data_config(model, use_test_size=test_size)
    dataset, classes = open_data(str(data_dir), "val", create_eval_transform(data_cfg), strict=strict,
                                 image_column=image_column, label_column=label_column)
    names = model.pretrained_cfg.get("label_names")
    if names and classes != list(names)[: len(classes)] and set(classes) - set(names):
        raise ConfigError(f"the classes of {data_dir} are not the model's classes; unknown: "
                          f"{sorted(set(classes) - set(names))[:5]}")
    out_classes = getattr(model, "num_classes", None)
    if out_classes and len(classes) > out_classes:
        raise ConfigError(f"{data_dir} has {len(classes)} classes but the model predicts {out_classes}")
    loader = build_loader(dataset, batch_size, workers, info)
    result = evaluate(model.to(info.device), loader, info, amp=amp)
    return {**result, "input_size": list(data_cfg["input_size"]), "crop_pct": data_cfg["crop_pct"]}
