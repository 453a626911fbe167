"""Parameters and GMACs of the full detector (800×1280, COCO's 80 classes) and segmenter (512×2048, ADE20K's
150 classes), next to the paper's Tables 2 and 3.

Same convention as the classifiers' counts (``mambaout.complexity``: one MAC per multiply-add of a convolution,
linear layer or matmul, LayerNorm 5 per element, element-wise ops free). The detector is counted as mmdetection's
``get_flops`` runs it: 1000 RPN proposals through the box head and 100 detections through the mask head.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models.complexity import _CUSTOM, count_macs, count_params

# (params in millions, GMACs) as the paper reports them.
PAPER = {
    ("detect", "mambaout_tiny"): (43, 262), ("detect", "mambaout_small"): (65, 354),
    ("detect", "mambaout_base"): (100, 495),
    ("segment", "mambaout_tiny"): (54, 938), ("segment", "mambaout_small"): (76, 1032),
    ("segment", "mambaout_base"): (112, 1178),
}
SIZES = {"detect": (800, 1280), "segment": (512, 2048)}
CLASSES = {"detect": 80, "segment": 150}


@torch.no_grad()
def detector_macs(model, size: tuple[int, int] = (800, 1280)) -> int:
    """MACs of one eval forward of a torchvision Mask R-CNN on one ``size`` image (real tensors: the detector's
    proposal and NMS steps cannot run on the meta device)."""
    model = model.eval()
    heads = model.roi_heads
    saved = heads.score_thresh, heads.detections_per_img
    # With thresholds off, an untrained model still yields the 100 detections the mask head is counted with.
    heads.score_thresh, heads.detections_per_img = 0.0, 100
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
        with counter:
            model([torch.rand(3, *size)])
    finally:
        heads.score_thresh, heads.detections_per_img = saved
    return counter.get_total_flops() // 2


def dense_complexity(task: str, name: str, num_classes: int | None = None,
                     size: tuple[int, int] | None = None) -> dict:
    """Params and GMACs of ``name`` as a detector or segmenter, with the paper's numbers where it has them."""
    from .backbone import MambaOutBackbone

    num_classes = num_classes or CLASSES[task]
    size = size or SIZES[task]
    backbone = MambaOutBackbone(name)
    if task == "detect":
        from .detection import build_mask_rcnn

        model = build_mask_rcnn(backbone, num_classes, min_size=min(size), max_size=max(size))
        macs = detector_macs(model, size)
    else:
        from .segmentation import UperNet

        model = UperNet(backbone, num_classes)
        macs = count_macs(model, (3, *size))
    paper = PAPER.get((task, name))
    return {"task": task, "model": name, "size": list(size), "num_classes": num_classes,
            "params": count_params(model), "gmacs": round(macs / 1e9, 1),
            "params_paper_m": paper[0] if paper else None, "gmacs_paper": paper[1] if paper else None}
