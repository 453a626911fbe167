# MambaOut-Tiny Mask R-CNN + FPN 1x on COCO (paper: box AP 45.1, mask AP 41.0). Train with mmdet's tools/train.py; the
# backbone's ImageNet weights are the official release, fetched once and checksum-verified.
_base_ = ["./_base_/mask_rcnn_mambaout_fpn.py", "./_base_/coco_instance_1x_adamw.py", "./_base_/runtime.py"]

arch = "mambaout_tiny"
dims = [96, 192, 384, 576]
drop_path_rate = 0.2  # Swin-T's in its Mask R-CNN configs; the paper gives none for COCO
model = dict(backbone=dict(arch=arch, drop_path_rate=drop_path_rate), neck=dict(in_channels=dims))
