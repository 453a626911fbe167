"""A plain Vision Transformer (DeiT's architecture), fully-visible or causal, for the paper's Figure 3b.

Figure 3b trains ViT-Ti and ViT-S twice, once with ordinary attention and once with a causal mask, and finds
causal mixing costs accuracy on ImageNet (72.2 -> 70.6 and 79.8 -> 78.9): the autoregressive mixing an SSM is
built for does not suit classification. The paper published no code for it; this is that model.

Sequence order: ``causal=False`` puts the class token first, as DeiT does. ``causal=True`` puts it *last*:
under a causal mask a first token sees only itself, so a class token there would classify from its own
embedding; last, it attends to every patch while each patch still sees only the patches before it in raster
order. The class token keeps its own position embedding (row 0) either way, so the two settings share one
state-dict layout and a checkpoint of one loads into the other. ``forward_features`` always returns the class
token first.

Parameter names follow timm's ViT (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.i.{norm1,
attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``) except the classifier, ``head.fc``, named as
MambaOut's so this project's checkpoint loading and fine-tuning (classifier re-initialised on a class-count
change) treat both architectures alike.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .mambaout import PretrainedCfgMixin, take_indices
from .mixers.attention import MultiHeadSelfAttention


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(s) for s in v)
    if len(v) != 2:
        raise ValueError(f"expected one size or (height, width), got {v}")
    return v


class PatchEmbed(nn.Module):
    """Non-overlapping P×P patches, each linearly projected: a conv with kernel = stride = P."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, device=None, dtype=None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 causal: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0, drop_path: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=qkv_bias, causal=causal, attn_drop=attn_drop,
                                           proj_drop=proj_drop, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ClassifierHead(nn.Module):
    """Pooling ('token': the class token, 'avg': mean of the patch tokens, '': none), dropout, linear."""

    POOLS = ("token", "avg", "")

    def __init__(self, dim: int, num_classes: int, global_pool: str = "token", drop_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        _check_pool(global_pool)
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes, device=device, dtype=dtype) if num_classes > 0 else nn.Identity()
        self.in_features = dim

    def reset(self, num_classes: int, global_pool: str | None = None, device=None, dtype=None):
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        self.fc = (nn.Linear(self.in_features, num_classes, device=device, dtype=dtype) if num_classes > 0
                   else nn.Identity())
        self.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, 1:].mean(1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def _check_pool(global_pool: str) -> None:
    if global_pool not in ClassifierHead.POOLS:
        raise ValueError(f"global_pool must be 'token', 'avg' or '' (no pooling), got {global_pool!r}")


def resample_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                       prefix: int = 1) -> torch.Tensor:
    """Bicubically resize the patch rows of a ``(1, prefix + h·w, D)`` position table to another grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    head, grid = pos_embed[:, :prefix], pos_embed[:, prefix:]
    d = grid.shape[-1]
    grid = grid.reshape(1, *old_grid, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, d).to(pos_embed.dtype)
    return torch.cat([head, grid], dim=1)


def _check_input_size(x: torch.Tensor, img_size: tuple[int, int]) -> None:
    h, w = x.shape[-2:]
    if (h, w) != tuple(img_size):
        raise ValueError(f"input size {h}×{w} differs from the model's img_size {img_size[0]}×{img_size[1]}; "
                         "create it with img_size=... or dynamic_img_size=True")


def _fit_to_grid(x: torch.Tensor, pos_embed: torch.Tensor, grid_size: tuple[int, int], patch: int):
    """Pad ``x`` to whole patches; return it, the position table resampled to its grid, and the grid."""
    h, w = x.shape[-2:]
    grid = (-(-h // patch), -(-w // patch))
    if (h, w) != (grid[0] * patch, grid[1] * patch):
        x = F.pad(x, (0, grid[1] * patch - w, 0, grid[0] * patch - h))
    return x, resample_pos_embed(pos_embed, grid_size, grid), grid


# FX records these as calls, run on each forward, instead of tracing their shape-dependent branches.
torch.fx.wrap("_check_input_size")
torch.fx.wrap("_fit_to_grid")


class VisionTransformer(PretrainedCfgMixin, nn.Module):
    """ViT with a class token and learned position embeddings; ``causal=True`` masks attention causally.

    Exposes the contract of :class:`~mambaout.models.mambaout.MambaOut` where it applies: ``forward_features``
    (``(B, 1 + N, D)`` tokens, class token first), ``forward_head(pre_logits=)``, ``forward_intermediates``,
    ``reset_classifier``, ``set_grad_checkpointing``, ``feature_info`` (one entry per block, stride
    ``patch_size``), ``num_classes``, ``num_features``, ``head_hidden_size``, ``pretrained_cfg``/
    ``default_cfg``, ``no_weight_decay`` (the position table and class token).

    The input size is fixed at ``img_size`` (the position table has one row per patch of it) unless
    ``dynamic_img_size=True``, which resamples the table to each input's grid; :meth:`set_input_size` resamples
    it once, for fine-tuning at another resolution.
    """

    output_fmt = "NLC"

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        causal: bool = False,
        global_pool: str = "token",
        dynamic_img_size: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.img_size = _pair(img_size)
        if any(s % patch_size for s in self.img_size):
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.causal = causal
        self.dynamic_img_size = dynamic_img_size
        self.num_prefix_tokens = 1
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        # Row 0 belongs to the class token wherever the sequence puts it (see the module docstring).
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + math.prod(self.grid_size), embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, causal=causal, attn_drop=attn_drop_rate,
                  proj_drop=proj_drop_rate, drop_path=rates[i], **dd)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, **dd)
        self.head = ClassifierHead(embed_dim, num_classes, global_pool=global_pool, drop_rate=drop_rate, **dd)
        self.feature_info = [{"num_chs": embed_dim, "reduction": patch_size, "module": f"blocks.{i}"}
                             for i in range(depth)]
        self.pretrained_cfg: dict = {}
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        # DeiT's initialisation: the patch-embedding conv keeps PyTorch's default, only linears are redrawn.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^cls_token|^pos_embed|^patch_embed", "blocks": [(r"^blocks\.(\d+)", None),
                                                                           (r"^norm", (99999,))]}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        # A removed classifier leaves the head without parameters; the final norm tells where the rest lives.
        ref = self.norm.weight
        self.head.reset(num_classes, global_pool, device=ref.device, dtype=ref.dtype)

    def set_input_size(self, img_size: int | Sequence[int] | None = None) -> None:
        """Resample the position table to ``img_size`` (kept trainable or frozen as it was)."""
        if img_size is None:
            return
        size = _pair(img_size)
        if any(s % self.patch_size for s in size):
            raise ValueError(f"img_size {size} is not a multiple of patch_size {self.patch_size}")
        grid = (size[0] // self.patch_size, size[1] // self.patch_size)
        with torch.no_grad():
            table = resample_pos_embed(self.pos_embed.data, self.grid_size, grid)
        self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
        self.img_size, self.grid_size = size, grid

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.dynamic_img_size:
            x, pos, grid = _fit_to_grid(x, self.pos_embed, self.grid_size, self.patch_size)
        else:
            _check_input_size(x, self.img_size)
            grid, pos = self.grid_size, self.pos_embed
        x = self.patch_embed(x) + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        # Causal: the class token goes last so that it sees every patch (see the module docstring).
        x = torch.cat([x, cls] if self.causal else [cls, x], dim=1)
        return self.pos_drop(x), grid

    def _class_first(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, -1:], x[:, :-1]], dim=1) if self.causal else x

    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return self._class_first(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Patch tokens after the chosen blocks as ``(B, D, h, w)`` maps (``'NLC'``: ``(B, h·w, D)``), and
        optionally the final features.

        ``indices``: the last n blocks if an int, these blocks if a sequence, all if None. ``norm`` applies the
        final LayerNorm to each intermediate.
        """
        output_fmt = getattr(output_fmt, "value", output_fmt)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take = take_indices(len(self.blocks), indices, "block")
        last = take[-1] if (stop_early or intermediates_only) else len(self.blocks) - 1
        x, grid = self._embed(x)
        outs = []
        for i, blk in enumerate(self.blocks):
            if i > last:
                break
            x = self._run_block(blk, x)
            if i in take:
                y = self.norm(x) if norm else x
                patches = y[:, :-1] if self.causal else y[:, 1:]
                if output_fmt == "NCHW":
                    patches = patches.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
                outs.append(patches)
        if intermediates_only:
            return outs
        return self._class_first(self.norm(x)), outs


__all__ = ["VisionTransformer", "resample_pos_embed"]
