# MambaOut-Small UperNet 160k on ADE20K (paper: mIoU 49.5 / 50.6 single- / multi-scale). Train with mmseg's
# tools/train.py; the backbone's ImageNet weights are the official release, fetched once and checksum-verified.
_base_ = ["./_base_/upernet_mambaout.py", "./_base_/ade20k_160k_adamw.py", "./_base_/runtime.py"]

arch = "mambaout_small"
dims = [96, 192, 384, 576]
drop_path_rate = 0.3  # the paper's for Small (0.3-0.4)
model = dict(backbone=dict(arch=arch, drop_path_rate=drop_path_rate), decode_head=dict(in_channels=dims),
             auxiliary_head=dict(in_channels=dims[2]))
