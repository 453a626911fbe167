"""Mask R-CNN on a MambaOut backbone: an FPN neck over the four LayerNorm'ed stage maps plus torchvision's
``MaskRCNN`` (RPN, RoI box head and mask head, and the resize/normalise transform).

The paper's COCO setting is the standard 1x/3x Mask R-CNN recipe: images resized so the shorter side is 800 and the
longer at most 1333, a 256-channel FPN with five levels (strides 4..64) and one anchor size per level.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.zoo import IMAGENET_MEAN, IMAGENET_STD
from .backbone import MambaOutBackbone

DEFAULT_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
# The RoI poolers read the four backbone levels by these names; "pool" (stride 64) only feeds the RPN.
LEVEL_NAMES = ("0", "1", "2", "3")
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


class MambaOutFPN(nn.Module):
    """A MambaOut backbone followed by a feature pyramid: five 256-channel maps named "0".."3" and "pool".

    torchvision's detectors read ``out_channels`` from their backbone, so it is an attribute here.
    """

    def __init__(self, backbone: MambaOutBackbone, out_channels: int = 256):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        if len(backbone.out_channels) != len(LEVEL_NAMES):
            raise ValueError(f"Mask R-CNN's FPN needs all four backbone stages (out_indices=(0, 1, 2, 3)); "
                             f"this backbone returns {len(backbone.out_channels)}")
        self.backbone = backbone
        self.fpn = FeaturePyramidNetwork(in_channels_list=list(backbone.out_channels), out_channels=out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = [*backbone.strides, backbone.strides[-1] * 2]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.backbone(x)
        return self.fpn(OrderedDict(zip(LEVEL_NAMES, feats)))


def build_mask_rcnn(backbone: MambaOutBackbone, num_classes: int, min_size: int = 800, max_size: int = 1333,
                    image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                    anchor_sizes: Sequence[Sequence[int]] = DEFAULT_ANCHOR_SIZES, channels: int = 256,
                    box_fc: int = 1024, box_head: str = "mmdet", **kwargs):
    """torchvision's ``MaskRCNN`` with a ``MambaOutFPN`` neck over ``backbone``.

    num_classes: object categories only (80 for COCO); the background class is added here.
    min_size / max_size: the detector's own resize (shorter side to ``min_size``, longer side at most
        ``max_size``); images are also padded to a multiple of 32, which the backbone needs.
    anchor_sizes: one tuple per pyramid level (five levels), each with three aspect ratios. Scale them down
        with ``min_size`` for small images.
    channels: width of the FPN and of the mask head's four convolutions (256 in Mask R-CNN); box_fc: width of
        the box head's two fully connected layers (1024). The mask head dominates CPU training time, so small
        experiments narrow both.
    box_head: "mmdet" (aligned RoIAlign, L1 box losses, mmdet's assigners; see ``mmdet_heads``) or "torchvision"
        (its own defaults).
    kwargs: passed to ``MaskRCNN`` (``box_detections_per_img``, ``rpn_post_nms_top_n_train``, ...).
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes is the number of object categories (e.g. 80 for COCO) and must be >= 1, "
                         f"got {num_classes!r}; the background class is added internally")
    anchor_sizes = tuple(tuple(int(s) for s in level) for level in anchor_sizes)
    if len(anchor_sizes) != len(LEVEL_NAMES) + 1:
        raise ValueError(f"anchor_sizes needs one entry per FPN level (5: strides 4, 8, 16, 32, 64), "
                         f"got {len(anchor_sizes)}")
    anchors = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=(ASPECT_RATIOS,) * len(anchor_sizes))
    heads = {}
    if channels != 256 or box_fc != 1024:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

        heads = {"box_head": TwoMLPHead(channels * 7 * 7, box_fc),
                 "box_predictor": FastRCNNPredictor(box_fc, num_classes + 1),
                 "mask_head": MaskRCNNHeads(channels, (channels,) * 4, 1),
                 "mask_predictor": MaskRCNNPredictor(channels, channels, num_classes + 1)}
    if box_head not in ("mmdet", "torchvision"):
        raise ValueError(f"box_head must be 'mmdet' or 'torchvision', got {box_head!r}")
    model = MaskRCNN(MambaOutFPN(backbone, channels), num_classes=None if heads else num_classes + 1,
                     min_size=min_size, max_size=max_size, image_mean=list(image_mean), image_std=list(image_std),
                     rpn_anchor_generator=anchors, **heads, **kwargs)
    if box_head == "mmdet":
        from .mmdet_heads import use_mmdet_semantics

        use_mmdet_semantics(model)
    return model


def detector_from_name(name: str, num_classes: int, checkpoint_path: str | Path | None = None,
                       pretrained: bool = False, frozen_stages: int = -1, drop_path_rate: float | None = None,
                       min_size: int = 800, max_size: int = 1333,
                       anchor_sizes: Sequence[Sequence[int]] = DEFAULT_ANCHOR_SIZES,
                       backbone_kwargs: Mapping[str, Any] | None = None, **kwargs):
    """Backbone and Mask R-CNN in one call: ``name`` is a MambaOut variant, ``checkpoint_path``/``pretrained``
    its ImageNet weights, ``backbone_kwargs`` architecture overrides for it (``token_mixer=``, ...); remaining
    kwargs go to ``MaskRCNN``."""
    backbone = MambaOutBackbone(name, checkpoint_path=checkpoint_path, pretrained=pretrained,
                                drop_path_rate=drop_path_rate, frozen_stages=frozen_stages,
                                **dict(backbone_kwargs or {}))
    return build_mask_rcnn(backbone, num_classes, min_size=min_size, max_size=max_size,
                           anchor_sizes=anchor_sizes, **kwargs)


def scaled_anchor_sizes(min_size: int, reference: int = 800) -> tuple[tuple[int, ...], ...]:
    """The default anchors scaled by ``min_size / reference`` (at least 4 px), for images far from 800 px:
    anchors much larger than the objects give the RPN no positive matches."""
    scale = min_size / reference
    return tuple((max(4, round(level[0] * scale)),) for level in DEFAULT_ANCHOR_SIZES)
