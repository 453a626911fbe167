"""COCO instance data for Mask R-CNN: a dataset in the official layout, conversion of detector outputs to COCO
results, the official COCOeval metrics (box and mask AP), a (distributed) evaluation loop, and drawing.

Layout read: ``root/annotations/instances_{split}.json`` and ``root/{split}/{file_name}``.
"""
from __future__ import annotations

import colorsys
import contextlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.safe import BadSampleLog, ImageLoadError, collate_skip, open_image
from ..engine import distributed as D
from ..utils.amp import autocast
from ..utils.progress import Progress

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress on every call; keep it out of training logs."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class CocoDetection(torch.utils.data.Dataset):
    """Images and Mask R-CNN targets from a COCO-layout folder.

    train: drop images without a usable (non-crowd, at least 1x1 px) instance and flip horizontally with
        probability ``hflip``. Resizing is left to the detector's own transform.
    Items: ``(image, target)``; image float32 3xHxW in [0, 1]; target ``boxes`` float32 Nx4 (x0, y0, x1, y1),
    ``labels`` int64 N (1..K, see ``cat_to_label``), ``masks`` uint8 NxHxW, ``image_id`` int.
    An item is ``None`` when its image file cannot be decoded, after one warning naming it (``collate`` drops
    such items); ``strict=True`` raises ``DataFileError`` instead. A file missing altogether is an error either way.
    """

    def __init__(self, root: str | Path, split: str = "train2017", train: bool = False, hflip: float = 0.5,
                 strict: bool = False):
        from pycocotools.coco import COCO

        root = Path(root)
        ann_file = root / "annotations" / f"instances_{split}.json"
        if not ann_file.is_file():
            raise FileNotFoundError(
                f"COCO annotation file not found: {ann_file}. Expected the COCO layout "
                f"root/annotations/instances_{split}.json with images under root/{split}/")
        self.image_dir = root / split
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.image_dir}")
        with _quiet():
            self.coco = COCO(str(ann_file))
        self.root, self.split, self.train, self.hflip = root, split, train, float(hflip)
        self.bad_samples = BadSampleLog(strict)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat = {i: c for c, i in self.cat_to_label.items()}
        ids = sorted(self.coco.getImgIds())
        if train:
            ids = [i for i in ids if self._annotations(i)]
        if not ids:
            raise ValueError(f"{ann_file}: the '{split}' split has no images"
                             + (" with a usable (non-crowd, at least 1x1 px) instance" if train else ""))
        self.ids = ids
        self._check_files_exist()

    def _check_files_exist(self) -> None:
        """Fail before training starts, not hours in, when the annotations list images that are not there."""
        present = {entry.name for entry in os.scandir(self.image_dir)}
        missing = [str(self.image_dir / name) for name in (self.coco.imgs[i]["file_name"] for i in self.ids)
                   if name not in present and not (self.image_dir / name).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(f"{len(missing)} image(s) listed in instances_{self.split}.json are missing: "
                                    f"{shown}")

    def _annotations(self, image_id: int) -> list[dict]:
        """The instances a target is made of: crowd regions are ignore areas in COCO, never training objects."""
        anns = self.coco.imgToAnns.get(image_id, [])
        return [a for a in anns
                if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1
                and a["category_id"] in self.cat_to_label]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def strict(self) -> bool:
        return self.bad_samples.strict

    def bad_files(self) -> list[str]:
        """The image files skipped so far (by this process or its DataLoader workers)."""
        return self.bad_samples.files()

    def _load_image(self, info: dict) -> torch.Tensor:
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"COCO image not found: {path} (image id {info['id']})")
        with open_image(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if array.shape[:2] != (info["height"], info["width"]):
            raise ValueError(f"{path} is {array.shape[1]}x{array.shape[0]} but the annotations say "
                             f"{info['width']}x{info['height']}; masks would not line up")
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        try:
            image = self._load_image(info)
        except ImageLoadError as e:
            return self.bad_samples.report(e.path, e)
        height, width = image.shape[-2:]
        anns = self._annotations(image_id)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        if anns:
            masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])).to(torch.uint8)
        else:
            masks = torch.zeros((0, height, width), dtype=torch.uint8)
        if self.train and self.hflip > 0 and torch.rand(()).item() < self.hflip:
            image, masks = image.flip(-1), masks.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": labels, "masks": masks, "image_id": int(image_id)}


def _as_lists(items):
    images, targets = zip(*items)
    return list(images), list(targets)


def collate(batch):
    """Detection batches are lists: images differ in size and the detector pads them itself. Skipped (``None``)
    items are dropped; a batch of nothing but skipped items is ``None``."""
    return collate_skip(batch, inner=_as_lists)


def predictions_to_coco(outputs: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int],
                        label_to_cat: Mapping[int, int], mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detector outputs (xyxy ``boxes``, ``labels``, ``scores``, optional Nx1xHxW ``masks`` of
    probabilities) to COCO result dicts with ``bbox`` (xywh) and, when masks are present, RLE ``segmentation``."""
    from pycocotools import mask as mask_utils

    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        if len(boxes) == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        labels = out["labels"].detach().cpu().tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        rles = [None] * len(boxes)
        if out.get("masks") is not None:
            masks = out["masks"].detach().float().cpu()
            if masks.ndim == 4:
                masks = masks[:, 0]
            binary = (masks > mask_threshold).numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
            for rle in rles:
                rle["counts"] = rle["counts"].decode("ascii")
        for box, label, score, rle in zip(xywh, labels, scores, rles):
            item = {"image_id": int(image_id), "category_id": int(label_to_cat[int(label)]),
                    "bbox": [float(v) for v in box], "score": float(score)}
            if rle is not None:
                item["segmentation"] = rle
            results.append(item)
    return results


def _zero_metrics() -> dict[str, float]:
    return dict.fromkeys(METRIC_KEYS, 0.0)


def _results_for(iou_type: str, results: Iterable[dict]) -> list[dict]:
    """Fresh dicts with only the geometry ``iou_type`` needs: loadRes and COCOeval write into the dicts they get,
    and a result carrying a bbox would get the box area instead of the mask area in segm evaluation."""
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    need = "bbox" if iou_type == "bbox" else "segmentation"
    return [{k: v for k, v in r.items() if k != drop} for r in results if need in r]


def coco_metrics(coco_gt, results: Sequence[dict], img_ids: Sequence[int] | None = None) -> dict[str, dict]:
    """COCOeval box and mask AP: ``{"bbox": {...}, "segm": {...}}`` with ``AP, AP50, AP75, APs, APm, APl`` as
    fractions, exactly COCOeval's ``stats[0:6]`` (-1 where there is no ground truth for an area range).

    img_ids: the images evaluated (default: every image of ``coco_gt``); images without detections count as
    misses. No detections at all gives zeros.
    """
    from pycocotools.cocoeval import COCOeval

    img_ids = sorted(coco_gt.getImgIds()) if img_ids is None else list(img_ids)
    metrics = {}
    for iou_type in IOU_TYPES:
        dts = _results_for(iou_type, results)
        if not dts:  # loadRes cannot build a result set from an empty list
            metrics[iou_type] = _zero_metrics()
            continue
        with _quiet():
            coco_dt = coco_gt.loadRes(dts)
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.imgIds = img_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {k: float(v) for k, v in zip(METRIC_KEYS, evaluator.stats[:6])}
    return metrics


def _shard(dataset, rank: int, world_size: int):
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))


@torch.no_grad()
def evaluate_coco(model, dataset: CocoDetection, device: str | torch.device = "cpu", batch_size: int = 2,
                  amp: bool | str = False, progress: bool = False, num_workers: int = 0) -> dict[str, dict]:
    """Box and mask AP of ``model`` (a torchvision-style detector) on ``dataset``, as ``coco_metrics`` gives it.

    Under torch.distributed each rank runs every world_size-th image; the detections are gathered so every rank
    evaluates all of them and returns the same numbers. The model's train/eval mode is restored afterwards.
    Images whose file cannot be read are left out of the evaluation (not counted as misses) and, when there are
    any, counted in an extra top-level key ``skipped``.
    """
    if getattr(dataset, "train", False) and getattr(dataset, "hflip", 0) > 0:
        raise ValueError("evaluate_coco needs a dataset built with train=False: train mode flips images at random")
    device = torch.device(device)
    info = D.current()
    rank, world = info.rank, info.world_size
    subset = _shard(dataset, rank, world) if world > 1 else dataset
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=num_workers)
    bar = Progress(len(loader), "coco eval", None, progress and rank == 0)
    was_training = model.training
    model.eval()
    results, seen_ids = [], []
    try:
        for batch in loader:
            bar.tick()
            if batch is None:
                continue
            images, targets = batch
            seen_ids += [t["image_id"] for t in targets]
            with autocast(amp, device):
                outputs = model([img.to(device, non_blocking=True) for img in images])
            outputs = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()}
                       for o in outputs]
            results += predictions_to_coco(outputs, [t["image_id"] for t in targets], dataset.label_to_cat)
    finally:
        model.train(was_training)
        bar.close()
    if world > 1:
        gathered = D.gather_objects((results, seen_ids), info)
        results = [r for part, _ in gathered for r in part]
        seen_ids = [i for _, ids in gathered for i in ids]
    evaluated = set(seen_ids)
    metrics: dict = coco_metrics(dataset.coco, results, img_ids=[i for i in dataset.ids if i in evaluated])
    skipped = len(dataset.ids) - len(evaluated)
    if skipped:
        metrics["skipped"] = skipped
    return metrics


def _class_colour(label: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour per class, so a class looks the same in every image."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, prediction: Mapping[str, torch.Tensor], class_names: Sequence[str],
                    score_threshold: float = 0.5, mask_threshold: float = 0.5, alpha: float = 0.45) -> Image.Image:
    """``image`` with the detections scoring at least ``score_threshold``: translucent masks, boxes and
    "name score" captions. ``labels`` are 1..K indices into ``class_names`` (0 is background)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    scores = prediction["scores"].detach().float().cpu()
    keep = scores >= score_threshold
    if not bool(keep.any()):
        return Image.fromarray(canvas.permute(1, 2, 0).numpy())
    boxes = prediction["boxes"].detach().float().cpu()[keep]
    labels = prediction["labels"].detach().cpu()[keep].tolist()
    colours = [_class_colour(int(lab)) for lab in labels]

    def name(lab: int) -> str:
        return class_names[lab - 1] if 1 <= lab <= len(class_names) else str(lab)

    captions = [f"{name(int(lab))} {s:.2f}" for lab, s in zip(labels, scores[keep].tolist())]
    if prediction.get("masks") is not None:
        masks = prediction["masks"].detach().float().cpu()[keep]
        if masks.ndim == 4:
            masks = masks[:, 0]
        if masks.shape[-2:] != canvas.shape[-2:]:
            raise ValueError(f"masks are {tuple(masks.shape[-2:])} but the image is {tuple(canvas.shape[-2:])} "
                             f"(HxW); draw on the image the detector was given")
        canvas = draw_segmentation_masks(canvas, masks > mask_threshold, alpha=alpha, colors=colours)
    canvas = draw_bounding_boxes(canvas, boxes, labels=captions, colors=colours, width=2)
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())
