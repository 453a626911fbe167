"""UperNet semantic segmentation on a MambaOut backbone (the paper's ADE20K setting) and its inference modes.

The decode head is UperNet: a pyramid pooling module on the last stage, an FPN over all stages, every level
upsampled to stride 4, fused by a 3x3 conv and classified per pixel. An FCN auxiliary head on stage 3 (stride 16)
adds a 0.4-weighted loss during training only.

Inference: ``predict_logits`` runs one scale as a whole image or as overlapping sliding windows;
``predict_probs`` resizes to each test scale (optionally mirrored too), averages the softmax probabilities and
returns them at the size the caller asks for (the original image size, where the ground truth lives).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = 255


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def fit_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """(height, width) after a keep-ratio resize that fits the long side within max(scale) and the short side
    within min(scale); the order of ``scale`` does not matter, as in the (2048, 512) ADE20K test scale."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of an NCHW float tensor (align_corners=False); antialiased when shrinking, so a
    downscaled test image matches what a PIL resize of the picture would give."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class ConvBNReLU(nn.Sequential):
    """conv (no bias: BN supplies it) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


def _classifier(channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, num_classes, 1)
    # Small initial logits: every class starts near-uniform, so the first losses are ~log(K), not huge.
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _local_bn_batch_check(module: nn.Module, x: torch.Tensor, where: str) -> None:
    """BatchNorm in training mode cannot normalise a single value per channel (batch 1 on a 1x1 map).
    SyncBatchNorm over several processes can, since the statistics span every rank's batch."""
    if not module.training or x.shape[0] * x.shape[-2] * x.shape[-1] > 1:
        return
    bn = next((m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)
    if bn is None or not bn.training:
        return
    if isinstance(bn, nn.SyncBatchNorm) and torch.distributed.is_available() \
            and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return
    raise ValueError(
        f"{where}: training BatchNorm on a 1x1 map needs a batch of at least 2 images (got 1); "
        "train with batch >= 2 per process (or SyncBatchNorm across processes), or call model.eval() to predict")


class UPerHead(nn.Module):
    """UperNet decode head over a list of NCHW stage maps (strides 4..32); returns logits at the stride-4 size.

    Training needs a batch of at least 2 (per process, unless SyncBatchNorm spans several): the pool-scale-1
    branch normalises a 1x1 map, and BatchNorm cannot take statistics over a single value. Eval works with 1.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 512, num_classes: int = 150,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        in_channels = list(in_channels)
        if len(in_channels) < 2:
            raise ValueError(f"UPerHead needs at least two stage maps, got in_channels={in_channels}")
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(ConvBNReLU(in_channels[-1], channels, 1) for _ in self.pool_scales)
        self.ppm_bottleneck = ConvBNReLU(in_channels[-1] + len(self.pool_scales) * channels, channels, 3)
        self.laterals = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = _classifier(channels, num_classes)

    def _pyramid_pool(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for scale, conv in zip(self.pool_scales, self.ppm):
            pooled = F.adaptive_avg_pool2d(x, scale)
            _local_bn_batch_check(conv, pooled, f"UPerHead pool scale {scale}")
            outs.append(F.interpolate(conv(pooled), size=size, mode="bilinear", align_corners=False))
        return self.ppm_bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.laterals) + 1:
            raise ValueError(f"UPerHead was built for {len(self.laterals) + 1} stage maps, got {len(feats)}")
        levels = [conv(f) for conv, f in zip(self.laterals, feats[:-1])]
        levels.append(self._pyramid_pool(feats[-1]))
        # Top-down: each coarser level is added into the next finer one before that one is refined.
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + F.interpolate(
                levels[i], size=levels[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """Auxiliary head: one 3x3 conv-BN-ReLU, dropout, 1x1 classifier, on a single stage map."""

    def __init__(self, in_channels: int, channels: int = 256, num_classes: int = 150, dropout: float = 0.1):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = _classifier(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      average: str = "all") -> torch.Tensor:
    """Pixel cross-entropy; logits are first resized (bilinear) to the labels. ``average="all"`` divides by every
    pixel, unlabelled ones included (mmseg's default, ``avg_non_ignore=False``, which Swin's UperNet config keeps);
    ``"labelled"`` by the labelled pixels only.

    A batch with no labelled pixel (a crop of only unlabelled area) gives 0 with a graph, not NaN.
    """
    if average not in ("all", "labelled"):
        raise ValueError(f"average must be 'all' or 'labelled', got {average!r}")
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    count = labels.numel() if average == "all" else (labels != ignore_index).sum()
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


class UperNet(nn.Module):
    """Backbone + UperNet decode head + FCN auxiliary head (training only).

    ``forward(images)`` gives decode logits N x K x H x W at the input size. ``loss(images, labels)`` gives
    ``(decode + aux_weight * aux, {"loss_decode": ..., "loss_aux": ...})`` with labels N x H x W (int64,
    ``ignore_index`` for unlabelled pixels). Training needs batch >= 2 per process (see ``UPerHead``).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, channels: int = 512, aux_channels: int = 256,
                 aux_weight: float = 0.4, aux_index: int = 2, ignore_index: int = IGNORE_INDEX,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, loss_average: str = "all"):
        super().__init__()
        in_channels = list(backbone.out_channels)
        if aux_weight > 0 and not 0 <= aux_index < len(in_channels):
            raise ValueError(f"aux_index {aux_index} is not one of the backbone's {len(in_channels)} outputs")
        self.backbone = backbone
        self.decode_head = UPerHead(in_channels, channels, num_classes, pool_scales, dropout)
        self.aux_head = FCNHead(in_channels[aux_index], aux_channels, num_classes, dropout) if aux_weight > 0 else None
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.aux_index = aux_index
        self.loss_average = loss_average

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.backbone(images)
        decode = segmentation_loss(self.decode_head(feats), labels, self.ignore_index, self.loss_average)
        if self.aux_head is not None:
            aux = segmentation_loss(self.aux_head(feats[self.aux_index]), labels, self.ignore_index,
                                    self.loss_average)
            total = decode + self.aux_weight * aux
        else:
            aux, total = decode.new_zeros(()), decode
        return total, {"loss_decode": decode.detach(), "loss_aux": aux.detach()}


def segmentor_from_name(name: str, num_classes: int, checkpoint_path=None, pretrained: bool = False,
                        frozen_stages: int = -1, drop_path_rate: float | None = None, channels: int = 512,
                        aux_weight: float = 0.4, aux_channels: int = 256, loss_average: str = "all") -> UperNet:
    """A MambaOut backbone (ImageNet weights from ``checkpoint_path`` / ``pretrained``) under a fresh UperNet."""
    from .backbone import MambaOutBackbone

    backbone = MambaOutBackbone(name, checkpoint_path=checkpoint_path, pretrained=pretrained,
                                drop_path_rate=drop_path_rate, frozen_stages=frozen_stages)
    return UperNet(backbone, num_classes, channels=channels, aux_channels=aux_channels, aux_weight=aux_weight,
                   loss_average=loss_average)


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # float32 from here on: under an outer autocast the model may answer in bf16/fp16.
    return model(x).float()


def slide_logits(model: nn.Module, image: torch.Tensor, crop_size: int | Sequence[int] = 512,
                 stride: int | Sequence[int] = 341) -> torch.Tensor:
    """Logits of N x 3 x H x W images from overlapping crop windows, averaged where windows overlap.

    Windows start every ``stride`` pixels and the last one in each direction is moved back to end at the image
    edge, so every pixel is covered. An image smaller than the crop is zero-padded (zero is the mean colour after
    normalisation) at the bottom/right and the padding is cut from the result.
    """
    crop_h, crop_w = _pair(crop_size)
    stride_h, stride_w = _pair(stride)
    if min(crop_h, crop_w, stride_h, stride_w) <= 0:
        raise ValueError(f"crop_size and stride must be positive, got {crop_size} and {stride}")
    n, _, height, width = image.shape
    padded = F.pad(image, (0, max(crop_w - width, 0), 0, max(crop_h - height, 0)))
    ph, pw = padded.shape[-2:]
    rows = max(ph - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(pw - crop_w + stride_w - 1, 0) // stride_w + 1
    total = count = None
    for r in range(rows):
        y1 = max(min(r * stride_h + crop_h, ph) - crop_h, 0)
        for c in range(cols):
            x1 = max(min(c * stride_w + crop_w, pw) - crop_w, 0)
            out = _run(model, padded[:, :, y1:y1 + crop_h, x1:x1 + crop_w])
            if total is None:
                total = out.new_zeros((n, out.shape[1], ph, pw))
                count = out.new_zeros((1, 1, ph, pw))
            total[:, :, y1:y1 + crop_h, x1:x1 + crop_w] += out
            count[:, :, y1:y1 + crop_h, x1:x1 + crop_w] += 1
    return (total / count)[:, :, :height, :width]


def predict_logits(model: nn.Module, image: torch.Tensor, mode: str = "whole", crop_size: int | Sequence[int] = 512,
                   stride: int | Sequence[int] = 341) -> torch.Tensor:
    """Float32 logits N x K x H x W of normalised images at their given size ('whole' or 'slide')."""
    if mode == "whole":
        return _run(model, image)
    if mode == "slide":
        return slide_logits(model, image, crop_size, stride)
    raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")


def predict_probs(model: nn.Module, image: torch.Tensor, out_size: Sequence[int], scales: Sequence[float] = (1.0,),
                  flip: bool = False, base_scale: Sequence[float] | None = (2048, 512), mode: str = "whole",
                  crop_size: int | Sequence[int] = 512, stride: int | Sequence[int] = 341) -> torch.Tensor:
    """Class probabilities N x K x out_h x out_w averaged over test scales (and mirrors when ``flip``).

    image: normalised N x 3 x H x W. For each ratio r it is resized keeping its aspect ratio to fit
    ``base_scale`` x r; with ``base_scale=None`` the image is taken as already at the test scale and r multiplies
    its size (r = 1 runs it untouched). Each prediction's logits are resized to ``out_size`` and then softmaxed,
    and the probabilities are averaged. Call under ``torch.no_grad()`` (and an autocast, for mixed precision).
    """
    if not scales:
        raise ValueError("predict_probs needs at least one scale")
    height, width = image.shape[-2:]
    out_size = (int(out_size[0]), int(out_size[1]))
    total, runs = None, 0
    for ratio in scales:
        if base_scale is None:
            size = (max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5)))
        else:
            size = fit_size(height, width, (base_scale[0] * ratio, base_scale[1] * ratio))
        scaled = resize_to(image, size)
        for mirrored in ((False, True) if flip else (False,)):
            x = scaled.flip(-1) if mirrored else scaled
            logits = predict_logits(model, x, mode, crop_size, stride)
            with torch.autocast(logits.device.type, enabled=False):
                if mirrored:
                    logits = logits.flip(-1)
                logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
                probs = logits.softmax(dim=1)
            total = probs if total is None else total.add_(probs)
            runs += 1
    return total / runs
