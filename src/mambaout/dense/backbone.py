"""The MambaOut classifier as a dense-prediction backbone: four stage maps (strides 4/8/16/32), each with its own
LayerNorm, as the paper's authors advise for detection and segmentation.

It wraps the one ``MambaOut`` class (built by ``create_model``, so every checkpoint layout and the ``token_mixer``
switch work here too) and drops the classification head.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

# Stochastic depth per backbone size for dense tasks (paper: 0.3 for Tiny, 0.3-0.4 Small, 0.6 Base on ADE20K).
DENSE_DROP_PATH = {"mambaout_tiny": 0.3, "mambaout_small": 0.3, "mambaout_base": 0.6}
# COCO: the paper gives none; Swin's mmdet Mask R-CNN configs use 0.2 for Swin-T and Swin-S, 0.3 for Swin-B.
DETECT_DROP_PATH = {"mambaout_tiny": 0.2, "mambaout_small": 0.2, "mambaout_base": 0.3}


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = super().forward(x)
        return x.permute(0, 3, 1, 2)


class MambaOutBackbone(nn.Module):
    """Stage outputs of a MambaOut model as a list of NCHW tensors, each normalised by its own LayerNorm.

    name: a registered MambaOut variant (``mambaout_tiny``, ``mambaout_femto_ssm``, ...).
    checkpoint_path / pretrained: ImageNet weights in any layout ``create_model`` reads; the head is discarded.
    frozen_stages: stem and stages ``0..frozen_stages`` get no gradient (-1: train everything; 0 freezes the stem
        and stage 0).
    out_indices: which stages to return.
    kwargs: architecture overrides passed to ``create_model`` (``token_mixer=``, ...).
    """

    def __init__(self, name: str = "mambaout_tiny", checkpoint_path: str | Path | None = None,
                 pretrained: bool = False, drop_path_rate: float | None = None, frozen_stages: int = -1,
                 out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs):
        super().__init__()
        from ..models import create_model
        from ..models.mambaout import MambaOut

        if drop_path_rate is None:
            drop_path_rate = DENSE_DROP_PATH.get(name, 0.1)
        body = create_model(name, pretrained=pretrained, checkpoint_path=checkpoint_path,
                            drop_path_rate=drop_path_rate, **kwargs)
        if not isinstance(body, MambaOut):
            raise ValueError(f"{name!r} is not a MambaOut model; dense backbones need the four-stage hierarchy")
        self.out_indices = tuple(out_indices)
        bad = [i for i in self.out_indices if not 0 <= i < len(body.stages)]
        if bad or not self.out_indices:
            raise ValueError(f"out_indices {self.out_indices} must name stages 0..{len(body.stages) - 1}")
        if not -1 <= frozen_stages < len(body.stages):
            raise ValueError(f"frozen_stages must be in -1..{len(body.stages) - 1}, got {frozen_stages}")
        body.prune_intermediate_layers(list(self.out_indices), prune_head=True)
        self.body = body
        self.name = name
        self.frozen_stages = frozen_stages
        self.out_channels = [body.feature_info[i]["num_chs"] for i in self.out_indices]
        self.strides = [body.feature_info[i]["reduction"] for i in self.out_indices]
        self.norms = nn.ModuleList(ChannelLayerNorm(c, eps=1e-6) for c in self.out_channels)
        self._freeze()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The wrapped model's layers (stem, then each downsample and block) under ``body.``, for layer-wise lr
        decay; the per-stage norms match none and count as the top layer."""
        def under_body(pattern: str) -> str:
            return "^body\\." + pattern[1:]

        out = {}
        for key, rule in self.body.group_matcher(coarse).items():
            out[key] = under_body(rule) if isinstance(rule, str) else [(under_body(r), o) for r, o in rule]
        return out

    def _freeze(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.body.stem, *self.body.stages[: self.frozen_stages + 1]]
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze()  # frozen stages stay in eval mode (no drop path)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        return [norm(f) for norm, f in zip(self.norms, feats)]
