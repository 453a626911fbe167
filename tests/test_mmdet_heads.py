"""Mask R-CNN with mmdetection's semantics on torchvision's parts (Swin's mmdet config): aligned RoIAlign with
adaptive sampling, L1 box losses, and mmdet's max-IoU assigner with its low-quality floor."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign, roi_align

from mambaout.dense.detection import detector_from_name
from mambaout.dense.mmdet_heads import AlignedRoIAlign, L1RegionProposalNetwork, L1RoIHeads, MaxIoUMatcher


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((str(i), torch.randn(1, 4, 64 // 2**i, 64 // 2**i, generator=g)) for i in range(4))


def test_roialign_is_pixel_aligned_with_adaptive_sampling_on_the_same_levels():
    feats = _features()
    boxes = [torch.tensor([[3.0, 5.0, 20.0, 30.0], [0.0, 0.0, 250.0, 250.0], [10.5, 7.25, 90.0, 60.0]])]
    pool = AlignedRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=0)
    plain = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=0)
    out = pool(feats, boxes, [(256, 256)])
    plain(feats, boxes, [(256, 256)])
    levels = plain.map_levels(boxes)  # the same level per box as torchvision's (mmdet's finest_scale 56)
    for i, level in enumerate(levels.tolist()):
        want = roi_align(feats[str(level)], [boxes[0][i:i + 1]], 7, spatial_scale=pool.scales[level],
                         sampling_ratio=0, aligned=True)
        assert torch.allclose(out[i:i + 1], want, atol=1e-6), i
    assert not torch.allclose(out, plain(feats, boxes, [(256, 256)]), atol=1e-4)  # unaligned differs


def test_the_assigner_is_mmdets_max_iou_assigner():
    # 2 ground-truth boxes x 5 predictions; R-CNN thresholds (0.5 / 0.5, low-quality floor 0.5) and RPN's.
    iou = torch.tensor([[0.9, 0.45, 0.2, 0.0, 0.55],
                        [0.6, 0.40, 0.1, 0.3, 0.55]])
    rcnn = MaxIoUMatcher(0.5, 0.5, min_pos_iou=0.5)(iou)
    # pred 0: 0.9 with gt 0; 1, 2, 3: below 0.5, background (-1); pred 4: ties 0.55, argmax gives gt 0, then gt 1's
    # best (0.6) is pred 0 -> pred 0 goes to gt 1 (mmdet's loop: later boxes win).
    assert rcnn.tolist() == [1, -1, -1, -1, 0]
    rpn = MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3)(iou)
    # pred 0 >= 0.7 -> gt 0, then gt 1's best is pred 0 (0.6 >= 0.3) -> gt 1; 1, 3 (0.3 is not below 0.3) and 4
    # ignored (-2), 2 background; a box whose best overlap is under the floor gets nothing extra (torchvision's
    # low-quality matching would give it its best prediction).
    assert rpn.tolist() == [1, -2, -1, -2, -2]
    floor = MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3)(torch.tensor([[0.2, 0.1]]))
    assert floor.tolist() == [-1, -1]


def test_rpn_box_loss_is_l1_over_the_sampled_anchors():
    model = detector_from_name("mambaout_test", 3, min_size=64, max_size=64, channels=16, box_fc=32,
                               anchor_sizes=((8,), (16,), (32,), (64,), (128,)))
    rpn = model.rpn
    assert isinstance(rpn, L1RegionProposalNetwork)
    rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction = 4, 0.5
    labels = [torch.tensor([1.0, 1.0, 0.0, 0.0])]
    deltas = torch.tensor([[0.5, -0.2, 0.05, 0.0], [0.1, 0.1, -0.3, 2.0], [9.0, 9.0, 9.0, 9.0], [1.0, 1, 1, 1]])
    targets = [torch.zeros(4, 4)]
    objectness = torch.zeros(4, 1)
    obj_loss, box_loss = rpn.compute_loss(objectness, deltas, labels, targets)
    assert box_loss.item() == pytest.approx((0.75 + 2.5) / 4)  # |deltas| of the two positives / 4 sampled
    assert obj_loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(torch.zeros(4), labels[0]).item())


def test_rcnn_box_loss_is_l1_and_checkpoints_load_either_way():
    torch.manual_seed(0)
    kw = dict(min_size=64, max_size=64, channels=16, box_fc=32, anchor_sizes=((8,), (16,), (32,), (64,), (128,)))
    model = detector_from_name("mambaout_test", 3, **kw)
    heads = model.roi_heads
    assert isinstance(heads, L1RoIHeads) and isinstance(heads.box_roi_pool, AlignedRoIAlign)
    assert heads.box_roi_pool.sampling_ratio == 0 and heads.mask_roi_pool.output_size == (14, 14)
    feats = _features(1)
    feats = OrderedDict((k, v.repeat(1, 4, 1, 1)) for k, v in feats.items())  # 16 channels
    gt = torch.tensor([[8.0, 8.0, 40.0, 48.0]])
    target = {"boxes": gt, "labels": torch.tensor([2]), "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)}
    heads.train()
    _, losses = heads(feats, [gt.clone()], [(64, 64)], [target])
    # The proposals are the box itself twice (torchvision adds the ground truth): both positive, target deltas 0,
    # so the loss is the |deltas| of class 2 of one of them.
    with torch.no_grad():
        d = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, [gt], [(64, 64)])))[1].reshape(1, -1, 4)
    assert losses["loss_box_reg"].item() == pytest.approx(d[0, 2].abs().sum().item(), rel=1e-5)
    smooth = F.smooth_l1_loss(d[0, 2], torch.zeros(4), beta=1 / 9, reduction="sum").item()
    assert losses["loss_box_reg"].item() != pytest.approx(smooth, rel=1e-3)
    losses["loss_box_reg"].backward()
    assert heads.box_predictor.bbox_pred.weight.grad is not None
    plain = detector_from_name("mambaout_test", 3, box_head="torchvision", **kw)
    plain.load_state_dict(model.state_dict())  # the same parameters under both
    assert type(plain.roi_heads).__name__ == "RoIHeads"
