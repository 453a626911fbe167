"""The variant table: architecture arguments, published weights and preprocessing of every model name."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Where the authors published the paper models' weights; $MAMBAOUT_RELEASE_URL replaces it (models/hub.py).
OFFICIAL_RELEASE = "https://github.com/yuweihao/MambaOut/releases/download/model"
_OFFICIAL_URL = OFFICIAL_RELEASE + "/{name}.pth"

# The later timm series: norm-first downsampling, no stem mid-norm, layer scale, timm's norm->mlp head.
_RW = dict(stem_mid_norm=False, downsample="conv_nf", ls_init_value=1e-6, head="norm_mlp")


@dataclass(frozen=True)
class Weights:
    """Where a variant's published weights live and how their inputs were prepared."""

    hf_hub_id: str | None = None  # timm's hub repository (timm layout, safetensors)
    url: str | None = None  # the official release file (official layout)
    sha256: str | None = None  # pinned digest of ``url``; None means trust-on-first-download (recorded)
    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 224, 224)
    test_input_size: tuple[int, int, int] = (3, 288, 288)  # where timm's re-evaluation scores higher
    test_crop_pct: float | None = None  # the crop at the test size, when it differs from crop_pct
    crop_pct: float = 1.0
    crop_mode: str = "center"


@dataclass(frozen=True)
class Variant:
    name: str
    args: dict
    weights: Weights | None = None
    top1_paper: float | None = None  # ImageNet-1k top-1 reported by the paper
    top1_timm: float | None = None  # top-1 of the same weights re-evaluated by timm
    drop_path: float = 0.0  # the paper's training drop path rate
    params: int | None = None  # exact published parameter count at 1000 classes
    gmacs: float | None = None  # published GMACs at 224², one multiply-add = one MAC
    tags: tuple[str, ...] = field(default=())
    builder: str = "mambaout"  # the model class that builds it: 'mambaout' (MambaOut) or 'vit' (VisionTransformer)
    cfg: dict = field(default_factory=dict)  # pretrained_cfg entries that differ from MambaOut's
    extra: dict = field(default_factory=dict)  # further published numbers (Figure 3b's causal top-1)
    more_weights: tuple[Weights, ...] = ()  # timm's other pretrained tags of the same architecture

    def pretrained(self) -> dict[str, Weights]:
        """Every published set of weights by timm's tag (``in1k``, ``sw_e150_in12k``, ...), the default first."""
        found = [w for w in (self.weights, *self.more_weights) if w is not None]
        return {weights_tag(w): w for w in found}


def weights_tag(w: Weights) -> str:
    """timm's tag of a set of weights: what follows the dot of its hub name (``timm/mambaout_tiny.in1k``)."""
    return w.hf_hub_id.rsplit(".", 1)[1] if w.hf_hub_id and "." in w.hf_hub_id else "default"


def _paper(name, depths, dims, top1, top1_timm, dp, params, gmacs):
    return Variant(
        name, dict(depths=depths, dims=dims),
        Weights(hf_hub_id=f"timm/{name}.in1k", url=_OFFICIAL_URL.format(name=name)),
        top1_paper=top1, top1_timm=top1_timm, drop_path=dp, params=params, gmacs=gmacs, tags=("paper",),
    )


# A fixed-size ViT preprocesses as DeiT evaluated (resize 256, centre crop 224) and has no pooled map.
_VIT_CFG = dict(test_input_size=(3, 224, 224), fixed_input_size=True, pool_size=None, crop_pct=0.875,
                first_conv="patch_embed.proj")


def _vit(name, dim, heads, top1, top1_causal, params, gmacs):
    """DeiT's ViT at patch 16, depth 12, as trained for Figure 3b (no weights were published).

    ``top1_paper`` is the fully-visible model's; ``extra['top1_paper_causal']`` the same model with causal
    attention (``create_model(name, causal=True)``).
    """
    return Variant(
        name, dict(embed_dim=dim, depth=12, num_heads=heads, patch_size=16), top1_paper=top1, drop_path=0.1,
        params=params, gmacs=gmacs, tags=("vit", "figure3b"), builder="vit", cfg=_VIT_CFG,
        extra={"top1_paper_causal": top1_causal},
    )


# (name suffix, token mixer, scan order): the SSM of the Mamba block in each scan order, and attention.
_LAB = [("ssm", "ssm", "1d"), ("ssm_bi", "ssm", "bidirectional"), ("ssm_cross", "ssm", "cross"),
        ("attn", "attn", None), ("causal_attn", "causal_attn", None)]


def _lab(base: str, suffix: str, mixer: str, scan: str | None) -> Variant:
    ref = next(v for v in _VARIANTS_BASE if v.name == base)
    args = dict(ref.args, token_mixer=mixer)
    if scan:
        args["mixer_kwargs"] = {"scan": scan}
    tags = ("lab", "test") if "test" in ref.tags else ("lab",)
    return Variant(f"{base}_{suffix}", args, drop_path=ref.drop_path, tags=tags)


def _rw(name, tag, args, more=(), **weights):
    """A timm-series variant: its default tag's weights, and ``more`` as (tag, Weights fields) pairs."""
    extra = tuple(Weights(hf_hub_id=f"timm/{name}.{t}", **fields) for t, fields in more)
    return Variant(name, dict(_RW, **args), Weights(hf_hub_id=f"timm/{name}.{tag}", **weights), tags=("timm",),
                   more_weights=extra)


_VARIANTS_BASE = [
    _paper("mambaout_femto", (3, 3, 9, 3), (48, 96, 192, 288), 78.9, 78.88, 0.025, 7_304_536, 1.16),
    _paper("mambaout_kobe", (3, 3, 15, 3), (48, 96, 192, 288), 80.0, 79.99, 0.025, 9_141_208, 1.52),
    _paper("mambaout_tiny", (3, 3, 9, 3), (96, 192, 384, 576), 82.7, 82.74, 0.2, 26_545_096, 4.49),
    _paper("mambaout_small", (3, 4, 27, 3), (96, 192, 384, 576), 84.1, 84.09, 0.4, 48_488_072, 8.96),
    _paper("mambaout_base", (3, 4, 27, 3), (128, 256, 512, 768), 84.2, 84.19, 0.6, 84_813_092, 15.83),
    _rw("mambaout_small_rw", "sw_e450_in1k", dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576))),
    _rw("mambaout_base_short_rw", "sw_e500_in1k",
        dict(depths=(3, 3, 25, 3), dims=(128, 256, 512, 768), expansion_ratio=3.0, conv_ratio=1.25),
        crop_pct=0.95, test_crop_pct=1.0),
    _rw("mambaout_base_tall_rw", "sw_e500_in1k",
        dict(depths=(3, 4, 30, 3), dims=(128, 256, 512, 768), expansion_ratio=2.5, conv_ratio=1.25),
        crop_pct=0.95, test_crop_pct=1.0),
    _rw("mambaout_base_wide_rw", "sw_e500_in1k",
        dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768), expansion_ratio=3.0, conv_ratio=1.5, act="silu"),
        crop_pct=0.95, test_crop_pct=1.0),
    _rw("mambaout_base_plus_rw", "sw_e150_in12k_ft_in1k",
        dict(depths=(3, 4, 30, 3), dims=(128, 256, 512, 768), expansion_ratio=3.0, conv_ratio=1.5, act="silu"),
        more=(("sw_e150_r384_in12k_ft_in1k", dict(input_size=(3, 384, 384), test_input_size=(3, 384, 384),
                                                  crop_mode="squash")),
              ("sw_e150_in12k", dict(num_classes=11821)))),
    # A few-hundred-thousand-parameter model with every feature of the *_rw series, for fast tests.
    Variant("mambaout_test", dict(_RW, depths=(1, 1, 3, 1), dims=(16, 32, 48, 64), expansion_ratio=3.0,
                                  ls_init_value=1e-4, act="silu"), tags=("test",)),
]
_VARIANTS = [
    *_VARIANTS_BASE,
    # The "do we need Mamba?" lab: femto's skeleton with another token mixer (same recipe, seed and data).
    *[_lab("mambaout_femto", suffix, mixer, scan) for suffix, mixer, scan in _LAB],
    *[_lab("mambaout_test", suffix, mixer, scan) for suffix, mixer, scan in _LAB],
    # Figure 3b: ViT-Ti 72.2 -> 70.6 and ViT-S 79.8 -> 78.9 top-1 when attention is made causal.
    _vit("vit_tiny", 192, 3, 72.2, 70.6, 5_717_416, 1.26),
    _vit("vit_small", 384, 6, 79.8, 78.9, 22_050_664, 4.61),
]

VARIANTS: dict[str, Variant] = {v.name: v for v in _VARIANTS}


def split_tag(name: str) -> tuple[str, str | None]:
    """``'mambaout_tiny.in1k'`` -> ``('mambaout_tiny', 'in1k')``; a name without a tag -> ``(name, None)``."""
    base, _, tag = name.partition(".")
    return base, tag or None


def resolve_weights(name: str) -> tuple[Variant, Weights | None]:
    """The variant of ``name`` (``model`` or ``model.tag``) and the weights its tag names (the default without a
    tag); an unknown tag is a ValueError naming the tags there are."""
    base, tag = split_tag(name)
    variant = get_variant(base)
    if tag is None:
        return variant, variant.weights
    known = variant.pretrained()
    if tag not in known:
        raise ValueError(f"unknown pretrained tag {tag!r} of {base}; its tags: {', '.join(known) or 'none'}")
    return variant, known[tag]


def is_model_name(name: str) -> bool:
    try:
        resolve_weights(name)
    except ValueError:
        return False
    return True


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        close = [n for n in VARIANTS if name.split("_")[-1] in n] or list(VARIANTS)
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(close)}") from None


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``'mambaout_*_rw'``)."""
    names = list(VARIANTS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def pretrained_cfg(variant: Variant, weights: Weights | None = None) -> dict:
    """The preprocessing and head metadata timm keeps in ``model.pretrained_cfg``, of ``weights`` (default: the
    variant's default tag)."""
    w = weights or variant.weights or Weights()
    hw = w.input_size[1:]
    return {
        "architecture": variant.name,
        "tag": weights_tag(w) if w.hf_hub_id else "",
        "hf_hub_id": w.hf_hub_id,
        "url": w.url or "",
        "num_classes": w.num_classes,
        "input_size": w.input_size,
        "test_input_size": w.test_input_size,
        **({"test_crop_pct": w.test_crop_pct} if w.test_crop_pct is not None else {}),
        "fixed_input_size": False,
        "pool_size": (hw[0] // 32, hw[1] // 32),
        "crop_pct": w.crop_pct,
        "crop_mode": w.crop_mode,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "stem.conv1",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **variant.cfg,
    }
