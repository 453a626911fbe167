"""The MambaOut network: a 4-stage hierarchy of Gated CNN blocks, channels-last inside.

State-dict keys follow timm's layout (``stem.*``, ``stages.i.downsample.*``, ``stages.i.blocks.j.*``,
``head.*``), so timm's hub weights load as they are; :mod:`mambaout.models.weights` maps the official release
layout onto it.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from timm.layers import DropPath, LayerNorm, LayerScale, get_act_layer, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import fast
from .fast import set_fused_inference  # noqa: F401  (its documented home before the fast path had a module)
from .mixers import create_token_mixer, mixer_layout

_ACTS = {"gelu": nn.GELU, "silu": nn.SiLU}


def _act(name: str) -> nn.Module:
    try:
        return _ACTS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; available: {', '.join(_ACTS)}") from None


def _norm(dim: int, dd: dict) -> LayerNorm:
    # timm's LayerNorm class, as timm's MambaOut has: tools that dispatch on module types (ptflops, torchinfo,
    # quantizers) then see the same model in both.
    return LayerNorm(dim, eps=1e-6, **dd)


def _conv3x3_s2(cin: int, cout: int, dd: dict) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1, **dd)


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    # A dense NHWC tensor viewed as NCHW is channels_last: oneDNN convolves it without a reorder.
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class Stem(nn.Module):
    """conv3×3 s2 → [LayerNorm] → act → conv3×3 s2 → LayerNorm; NCHW image in, NHWC map out (stride 4)."""

    def __init__(self, in_chans: int, dim: int, mid_norm: bool = True, act: str = "gelu", dd: dict | None = None):
        super().__init__()
        dd = dd or {}
        self.conv1 = _conv3x3_s2(in_chans, dim // 2, dd)
        self.norm1 = _norm(dim // 2, dd) if mid_norm else None
        self.act = _act(act)
        self.conv2 = _conv3x3_s2(dim // 2, dim, dd)
        self.norm2 = _norm(dim, dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each op sees the memory layout it has in timm's model, which gives timm's numbers to the last bit (an
        # activation over channels_last memory rounds differently from one over NCHW); with the mid norm, a
        # channels_last input makes conv1's output dense for it once permuted to NHWC.
        if self.norm1 is not None:
            x = _to_nchw(self.norm1(_to_nhwc(self.conv1(x.contiguous(memory_format=torch.channels_last)))))
        else:
            x = self.conv1(x)
        x = _to_nhwc(self.conv2(self.act(x)))
        return self.norm2(x)


class Downsample(nn.Module):
    """conv3×3 s2 then LayerNorm (the paper's), or LayerNorm then conv (``norm_first``, timm's ``*_rw``)."""

    def __init__(self, dim: int, dim_out: int, norm_first: bool = False, dd: dict | None = None):
        super().__init__()
        dd = dd or {}
        self.norm_first = norm_first
        self.conv = _conv3x3_s2(dim, dim_out, dd)
        self.norm = _norm(dim if norm_first else dim_out, dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast.downsample_ok(self, x):
            return fast.downsample_forward(self, x)
        if self.norm_first:
            return _to_nhwc(self.conv(_to_nchw(self.norm(x).contiguous())))
        return self.norm(_to_nhwc(self.conv(_to_nchw(x.contiguous()))))


class GatedCNNBlock(nn.Module):
    """x + DropPath(fc2(act(g) * [i, mixer(c)])), (g, i, c) = split(fc1(LN(x))).

    ``self.conv`` is the token mixer; it keeps that attribute name so the default depthwise conv has the
    parameter names of every released checkpoint.
    """

    def __init__(
        self,
        dim: int,
        expansion_ratio: float = 8 / 3,
        kernel_size: int = 7,
        conv_ratio: float = 1.0,
        token_mixer: str = "conv",
        mixer_kwargs: dict | None = None,
        ls_init_value: float | None = None,
        act: str = "gelu",
        drop_path: float = 0.0,
        dd: dict | None = None,
    ):
        super().__init__()
        dd = dd or {}
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        if not 0 < conv_channels <= hidden:
            raise ValueError(f"conv_ratio={conv_ratio} gives {conv_channels} mixer channels; need 1..{hidden}")
        self.hidden = hidden
        self.split_indices = (hidden, hidden - conv_channels, conv_channels)
        self.norm = _norm(dim, dd)
        self.fc1 = nn.Linear(dim, 2 * hidden, **dd)
        self.act = _act(act)
        self.act_name = act
        self.conv = create_token_mixer(token_mixer, conv_channels, kernel_size=kernel_size, **dd,
                                       **(mixer_kwargs or {}))
        self.mixer_layout = mixer_layout(token_mixer)
        self.fc2 = nn.Linear(hidden, dim, **dd)
        self.ls = LayerScale(dim, init_values=ls_init_value, **dd) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def mix(self, c: torch.Tensor) -> torch.Tensor:
        """The token mixer on the ``c`` branch (B, H, W, C). A mixer of NCHW layout (the depthwise conv) gets the
        branch as a dense NHWC copy viewed as NCHW, i.e. channels_last, which oneDNN convolves without a reorder;
        its output permuted back is dense NHWC again."""
        if self.mixer_layout == "NCHW":
            return self.conv(c.contiguous().permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.conv(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast.block_ok(self, x):  # inference on CPU where nothing can observe it: same function, fewer passes
            return fast.block_forward(self, x)
        shortcut = x
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split_indices, dim=-1)
        c = self.mix(c)  # before the gate's activation: hooks see the submodules called in timm's order
        x = self.fc2(self.act(g) * torch.cat((i, c), dim=-1))
        return self.drop_path(self.ls(x)) + shortcut


class MambaOutStage(nn.Module):
    def __init__(self, dim: int, dim_out: int, depth: int, drop_path: Sequence[float], downsample: str = "",
                 dd: dict | None = None, **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        if downsample:
            self.downsample = Downsample(dim, dim_out, norm_first=downsample == "conv_nf", dd=dd)
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            GatedCNNBlock(dim_out, drop_path=drop_path[j], dd=dd, **block_kwargs) for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return self.blocks(x)


class MlpHead(nn.Module):
    """mean over H, W → LayerNorm → fc → act [→ LayerNorm] → dropout → fc.

    ``post_norm=True`` is the paper's head (the LayerNorm after the activation); ``False`` is the head of
    timm's ``*_rw`` models.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int, post_norm: bool = True,
                 global_pool: str = "avg", drop_rate: float = 0.0, dd: dict | None = None):
        super().__init__()
        dd = dd or {}
        _check_pool(global_pool)
        self.global_pool = global_pool
        self.in_features = in_features
        self.norm = _norm(in_features, dd)
        # The activation classes of timm's two heads (torch's GELU, timm's own in the *_rw head), for type-based
        # tools to count the same.
        act = nn.GELU() if post_norm else get_act_layer("gelu")()
        layers = [("fc", nn.Linear(in_features, hidden, **dd)), ("act", act)]
        if post_norm:
            layers.append(("norm", _norm(hidden, dd)))
        self.pre_logits = nn.Sequential(OrderedDict(layers))
        self.num_features = hidden
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False):
        ref = next(iter(self.parameters()), None)
        dd = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        if reset_other:
            self.norm, self.pre_logits = nn.Identity(), nn.Identity()
            self.num_features = self.in_features
        self.fc = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        x = self.drop(self.pre_logits(self.norm(x)))
        return x if pre_logits else self.fc(x)


def _check_pool(global_pool: str) -> None:
    if global_pool not in ("", "avg"):
        raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")


def take_indices(n: int, indices: int | Sequence[int] | None, what: str = "stage") -> list[int]:
    """timm's ``indices`` convention: all of ``n`` if None, the last k if an int, else these (negatives allowed)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"take the last 1..{n} {what}s, got {indices}")
        return list(range(n - indices, n))
    for i in indices:
        if not -n <= i < n:
            raise ValueError(f"{what} index {i} out of range for {n} {what}s")
    return sorted(i % n for i in indices)


class PretrainedCfgMixin:
    """``pretrained_cfg`` under the second name timm reads, ``default_cfg``: both refer to one dict."""

    pretrained_cfg: dict

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: dict) -> None:
        self.pretrained_cfg = cfg


class MambaOut(PretrainedCfgMixin, nn.Module):
    """MambaOut: Gated CNN blocks in four stages (strides 4, 8, 16, 32) and an MLP head.

    Exposes timm's backbone contract: ``forward_features`` (NHWC), ``forward_head``, ``forward_intermediates``,
    ``feature_info``, ``reset_classifier``, ``set_grad_checkpointing``, ``pretrained_cfg``.
    """

    output_fmt = "NHWC"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 576),
        expansion_ratio: float = 8 / 3,
        kernel_size: int = 7,
        conv_ratio: float = 1.0,
        token_mixer: str = "conv",
        mixer_kwargs: dict | None = None,
        stem_mid_norm: bool = True,
        downsample: str = "conv",
        ls_init_value: float | None = None,
        act: str = "gelu",
        head: str = "mlp",
        head_ratio: float = 4.0,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must have the same length")
        if downsample not in ("conv", "conv_nf"):
            raise ValueError(f"downsample must be 'conv' or 'conv_nf', got {downsample!r}")
        if head not in ("mlp", "norm_mlp"):
            raise ValueError(f"head must be 'mlp' or 'norm_mlp', got {head!r}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.token_mixer = token_mixer
        self.stem = Stem(in_chans, dims[0], mid_norm=stem_mid_norm, act=act, dd=dd)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.Sequential()
        self.feature_info = []
        prev, start = dims[0], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            self.stages.append(MambaOutStage(
                prev, dim, depth, rates[start:start + depth], downsample=downsample if i > 0 else "", dd=dd,
                expansion_ratio=expansion_ratio, kernel_size=kernel_size, conv_ratio=conv_ratio,
                token_mixer=token_mixer, mixer_kwargs=mixer_kwargs, ls_init_value=ls_init_value, act=act,
            ))
            self.feature_info.append({"num_chs": dim, "reduction": 4 * 2 ** i, "module": f"stages.{i}"})
            prev, start = dim, start + depth
        self.num_features = prev
        self.head = MlpHead(prev, num_classes, int(head_ratio * prev), post_norm=head == "mlp",
                            global_pool=global_pool, drop_rate=drop_rate, dd=dd)
        self.head_hidden_size = self.head.num_features
        self.pretrained_cfg: dict = {}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay: the stem, then each downsample and block in order."""
        if coarse:
            return {"stem": r"^stem", "blocks": r"^stages\.(\d+)"}
        return {"stem": r"^stem", "blocks": [(r"^stages\.(\d+)\.downsample", (0,)),
                                             (r"^stages\.(\d+)\.blocks\.(\d+)", None)]}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False):
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, reset_other=reset_other)
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs (strides 4/8/16/32) as NCHW (default) or NHWC maps, and optionally the final features.

        ``indices``: the last n stages if an int, these stages if a sequence, all if None. ``norm`` is accepted
        for timm compatibility; MambaOut has no norm between the stages and the head.
        """
        output_fmt = getattr(output_fmt, "value", output_fmt)  # timm passes its Format enum
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = take_indices(len(self.stages), indices, "stage")
        last = take[-1] if (stop_early or intermediates_only) else len(self.stages) - 1
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if i > last:
                break
            x = stage(x)
            if i in take:
                outs.append(x.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else x)
        return outs if intermediates_only else (x, outs)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last wanted one (and the head) so a feature extractor carries no dead
        weight; returns the stage indices to take."""
        take = take_indices(len(self.stages), indices, "stage")
        keep = take[-1] + 1
        if keep < len(self.stages):
            self.stages = self.stages[:keep]
            self.feature_info = self.feature_info[:keep]
            self.num_features = self.feature_info[-1]["num_chs"]
            self.head.in_features = self.head.num_features = self.num_features
            self.reset_classifier(0, "", reset_other=True)
        elif prune_head:
            self.reset_classifier(0, "", reset_other=True)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
