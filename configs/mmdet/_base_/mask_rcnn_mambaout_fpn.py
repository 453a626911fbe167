# Mask R-CNN + FPN on a MambaOut backbone, written out whole so that loading it needs no config shipped inside
# mmdet. The heads, assigners and samplers are mmdet's standard Mask R-CNN ones (RoIAlign with sampling_ratio
# 0, L1 box losses), as in the Swin setup the MambaOut authors followed.
custom_imports = dict(imports=["mambaout.integrations.openmmlab"], allow_failed_imports=False)

arch = "mambaout_tiny"
dims = [96, 192, 384, 576]
drop_path_rate = 0.2
num_classes = 80
fpn = 256
strides = [4, 8, 16, 32]
rpn_nms = dict(type="nms", iou_threshold=0.7)

model = dict(
    type="MaskRCNN",
    data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_mask=True, pad_size_divisor=32),
    backbone=dict(type="MambaOut", arch=arch, pretrained=True, drop_path_rate=drop_path_rate, frozen_stages=-1,
                  out_indices=(0, 1, 2, 3)),
    neck=dict(type="FPN", in_channels=dims, out_channels=fpn, num_outs=5),
    rpn_head=dict(
        type="RPNHead", in_channels=fpn, feat_channels=fpn,
        anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[*strides, 64]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
    roi_head=dict(
        type="StandardRoIHead",
        bbox_roi_extractor=dict(type="SingleRoIExtractor", out_channels=fpn, featmap_strides=strides,
                                roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)),
        bbox_head=dict(
            type="Shared2FCBBoxHead", in_channels=fpn, fc_out_channels=1024, roi_feat_size=7,
            num_classes=num_classes, reg_class_agnostic=False,
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        mask_roi_extractor=dict(type="SingleRoIExtractor", out_channels=fpn, featmap_strides=strides,
                                roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0)),
        mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=fpn, conv_out_channels=fpn,
                       num_classes=num_classes,
                       loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                               match_low_quality=True, ignore_iof_thr=-1),
                 sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                              add_gt_as_proposals=False),
                 allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=rpn_nms, min_bbox_size=0),
        rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                match_low_quality=True, ignore_iof_thr=-1),
                  sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1,
                               add_gt_as_proposals=True),
                  mask_size=28, pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=rpn_nms, min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100, mask_thr_binary=0.5)),
)
