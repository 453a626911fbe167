"""mmdetection's Mask R-CNN semantics on torchvision's parts, where the two differ in ways that move AP by tenths
of a point (Swin's mmdet config, which the COCO numbers of Swin, ConvNeXt, VMamba and MambaOut come from):

- RoIAlign with adaptive sampling (``sampling_ratio=0``) and ``aligned=True`` (torchvision's detectors: 2 and
  False);
- L1 box-regression losses in the RPN and the R-CNN head (torchvision: smooth L1 with beta 1/9), with the same
  normalisation (the sampled anchors / RoIs);
- mmdet's ``MaxIoUAssigner``: after the thresholds, each ground-truth box also takes the predictions that overlap
  it most, but only when that overlap reaches ``min_pos_iou`` (torchvision's low-quality matching has no floor,
  and its R-CNN matcher none at all).

``use_mmdet_semantics(model)`` turns a torchvision ``MaskRCNN`` into that detector in place: the parameters and
their names stay as they are, so checkpoints load either way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales


class AlignedRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` with pixel-aligned sampling (mmcv's ``RoIAlign(aligned=True)``): the same level
    mapping (``floor(log2(sqrt(area) / 56))``, mmdet's ``finest_scale=56``, is torchvision's k0=4, s0=224)."""

    def forward(self, x, boxes, image_shapes):
        feats = [x[k] for k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes) if len(feats) > 1 else torch.zeros(len(rois), dtype=torch.int64)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            out[idx] = roi_align(feat, rois[idx], self.output_size, spatial_scale=scale,
                                 sampling_ratio=self.sampling_ratio, aligned=True).to(out.dtype)
        return out


class MaxIoUMatcher(Matcher):
    """mmdet's ``MaxIoUAssigner`` (``gt_max_assign_all=True``, ``match_low_quality=True``) in torchvision's
    ``Matcher`` interface: predictions at or above ``high`` are positive, below ``low`` background, between ignored;
    then every prediction whose overlap with a box equals that box's best, if the best reaches ``min_pos_iou``, is
    assigned to it (later boxes win ties, as mmdet's loop does)."""

    def __init__(self, high: float, low: float, min_pos_iou: float):
        super().__init__(high, low, allow_low_quality_matches=False)
        self.min_pos_iou = min_pos_iou

    def __call__(self, match_quality_matrix: torch.Tensor) -> torch.Tensor:
        matches = super().__call__(match_quality_matrix)
        best = match_quality_matrix.max(dim=1).values
        for gt in torch.where(best >= self.min_pos_iou)[0].tolist():
            matches[match_quality_matrix[gt] == best[gt]] = gt
        return matches


class L1RegionProposalNetwork(RegionProposalNetwork):
    """The RPN with mmdet's L1 box loss (sum over the sampled positives / the sampled anchors)."""

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos, dim=0))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg, dim=0))[0]])
        labels, targets = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
        box_loss = F.l1_loss(pred_bbox_deltas[pos], targets[pos], reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss


class L1RoIHeads(RoIHeads):
    """The R-CNN heads with mmdet's L1 box loss: torchvision's training forward runs as it is, and its smooth-L1
    ``loss_box_reg`` is replaced by L1 on the same predictions and targets (sum over the positive RoIs' own class
    deltas / the sampled RoIs)."""

    def select_training_samples(self, proposals, targets):
        proposals, matched_idxs, labels, regression_targets = super().select_training_samples(proposals, targets)
        self._box_targets = (labels, regression_targets)
        return proposals, matched_idxs, labels, regression_targets

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        seen = {}
        handle = self.box_predictor.register_forward_hook(lambda m, args, out: seen.setdefault("out", out))
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            handle.remove()
            labels, targets_ = self.__dict__.pop("_box_targets", (None, None))
        _, box_regression = seen["out"]
        labels, targets_ = torch.cat(labels, dim=0), torch.cat(targets_, dim=0)
        pos = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(box_regression.shape[0], -1, 4)[pos, labels[pos]]
        losses["loss_box_reg"] = F.l1_loss(deltas, targets_[pos], reduction="sum") / labels.numel()
        return result, losses


def use_mmdet_semantics(model) -> None:
    """Give a torchvision ``MaskRCNN`` mmdet's RoIAlign, L1 losses and assigners, in place (see the module)."""
    rpn, heads = model.rpn, model.roi_heads
    rpn.__class__ = L1RegionProposalNetwork  # methods only: the same state, the same parameter names
    m = rpn.proposal_matcher  # mmdet's RPN: 0.7 / 0.3, low-quality matches from 0.3; R-CNN: 0.5 / 0.5 from 0.5
    rpn.proposal_matcher = MaxIoUMatcher(m.high_threshold, m.low_threshold, min_pos_iou=m.low_threshold)
    heads.__class__ = L1RoIHeads
    m = heads.proposal_matcher
    heads.proposal_matcher = MaxIoUMatcher(m.high_threshold, m.low_threshold, min_pos_iou=m.high_threshold)
    for name in ("box_roi_pool", "mask_roi_pool"):
        pool = getattr(heads, name)
        if pool is not None:
            setattr(heads, name, AlignedRoIAlign(pool.featmap_names, pool.output_size, sampling_ratio=0,
                                                 canonical_scale=pool.canonical_scale,
                                                 canonical_level=pool.canonical_level))
