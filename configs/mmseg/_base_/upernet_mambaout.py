# UperNet on a MambaOut backbone with an auxiliary FCN head on stage 3, written out whole so that loading it
# needs no config shipped inside mmseg. The backbone puts a LayerNorm on every stage output (the paper's
# authors: 46.1 mIoU without, 47.4 with); the heads use SyncBN as Swin's mmseg setup does.
custom_imports = dict(imports=["mambaout.integrations.openmmlab"], allow_failed_imports=False)

arch = "mambaout_tiny"
dims = [96, 192, 384, 576]
drop_path_rate = 0.3
num_classes = 150
norm_cfg = dict(type="SyncBN", requires_grad=True)

data_preprocessor = dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                         bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(512, 512))
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(type="MambaOut", arch=arch, pretrained=True, drop_path_rate=drop_path_rate, frozen_stages=-1,
                  out_indices=(0, 1, 2, 3)),
    decode_head=dict(type="UPerHead", in_channels=dims, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                     channels=512, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg,
                     align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type="FCNHead", in_channels=dims[2], in_index=2, channels=256, num_convs=1,
                        concat_input=False, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg,
                        align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
