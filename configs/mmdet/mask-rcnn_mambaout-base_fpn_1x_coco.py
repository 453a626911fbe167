# MambaOut-Base Mask R-CNN + FPN 1x on COCO (paper: box AP 47.4, mask AP 43.0). Train with mmdet's tools/train.py; the
# backbone's ImageNet weights are the official release, fetched once and checksum-verified.
_base_ = ["./_base_/mask_rcnn_mambaout_fpn.py", "./_base_/coco_instance_1x_adamw.py", "./_base_/runtime.py"]

arch = "mambaout_base"
dims = [128, 256, 512, 768]
drop_path_rate = 0.3  # Swin-B's in its Mask R-CNN configs; the paper gives none for COCO
model = dict(backbone=dict(arch=arch, drop_path_rate=drop_path_rate), neck=dict(in_channels=dims))
