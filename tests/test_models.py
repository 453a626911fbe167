"""The architecture: every variant's shapes, gradients, features and the published counts."""
import pytest
import torch
from conftest import PAPER_MODELS

import mambaout
from mambaout import count_macs, count_params, create_model

ALL = mambaout.list_models()
MAMBAOUT = [n for n in ALL if mambaout.VARIANTS[n].builder == "mambaout"]


def test_list_models_pattern():
    assert mambaout.list_models("mambaout_*_rw") == [
        "mambaout_small_rw", "mambaout_base_short_rw", "mambaout_base_tall_rw", "mambaout_base_wide_rw",
        "mambaout_base_plus_rw",
    ]
    assert set(PAPER_MODELS) < set(ALL)
    assert "mambaout_test" in ALL


@pytest.mark.parametrize("name,params", [
    ("mambaout_femto", 7_304_536), ("mambaout_kobe", 9_141_208), ("mambaout_tiny", 26_545_096),
    ("mambaout_small", 48_488_072), ("mambaout_base", 84_813_092),
])
def test_paper_param_counts_exact(name, params):
    assert count_params(create_model(name, device="meta")) == params


@pytest.mark.parametrize("name,gmacs", [
    ("mambaout_femto", 1.16), ("mambaout_kobe", 1.52), ("mambaout_tiny", 4.49), ("mambaout_small", 8.96),
    ("mambaout_base", 15.83),
])
def test_paper_gmacs(name, gmacs):
    # exact to the digits the paper reports (its table rounds fvcore's count, which count_macs equals exactly:
    # tests/test_ecosystem.py)
    assert round(count_macs(create_model(name, device="meta")) / 1e9, 2) == gmacs


def test_macs_scale_with_resolution():
    model = create_model("mambaout_femto", device="meta")
    # Everything but the head grows with the pixel count: 448² costs just under 4× 224².
    ratio = count_macs(model, (3, 448, 448)) / count_macs(model, (3, 224, 224))
    assert 3.9 < ratio < 4.0


@pytest.mark.parametrize("name", MAMBAOUT)
def test_forward_backward_features(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 96)
    model.train()
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    model.eval()
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
    dims = model.feature_info
    for f, info in zip(feats, dims):
        assert f.shape == (2, info["num_chs"], 64 // info["reduction"], 96 // info["reduction"])
    assert [i["reduction"] for i in dims] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", ["mambaout_test", "mambaout_femto", "mambaout_base_wide_rw"])
def test_grad_checkpointing_same_output_and_grads(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    ref_out = model(x).detach()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), ref_out, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_forward_head_and_reset_classifier():
    model = create_model("mambaout_test").eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (1, 2, 2, 64)  # NHWC
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5) and model.num_classes == 5
    model.reset_classifier(0, "")
    assert model(x).shape == (1, 2, 2, model.head_hidden_size)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "max")


def test_features_only_extractor():
    net = create_model("mambaout_femto", features_only=True, out_indices=(1, 3))
    assert net.feature_info.channels() == [96, 288]
    assert net.feature_info.reduction() == [8, 32]
    outs = net(torch.randn(1, 3, 128, 160))
    assert [tuple(o.shape) for o in outs] == [(1, 96, 16, 20), (1, 288, 4, 5)]
    # The stages after the last one wanted, and the head, are pruned away.
    assert len(net.model.stages) == 4 and isinstance(net.model.head.fc, torch.nn.Identity)
    net2 = create_model("mambaout_femto", features_only=True, out_indices=(0, 1))
    assert len(net2.model.stages) == 2
    nhwc = create_model("mambaout_test", features_only=True, output_fmt="NHWC")
    assert nhwc(torch.randn(1, 3, 64, 64))[0].shape == (1, 16, 16, 16)


def test_features_match_forward_intermediates():
    torch.manual_seed(0)
    model = create_model("mambaout_test").eval()
    x = torch.randn(1, 3, 64, 64)
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(inter[-1], final.permute(0, 3, 1, 2))
    assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2


def test_pretrained_cfg_and_data_config():
    model = create_model("mambaout_tiny", device="meta")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bicubic"
    model.default_cfg = {**cfg, "crop_pct": 0.9}  # timm's second name for the same settings, both ways
    assert model.pretrained_cfg["crop_pct"] == 0.9 and model.default_cfg == model.pretrained_cfg
    model.pretrained_cfg = cfg
    data = mambaout.resolve_data_config(model)
    assert data["input_size"] == (3, 224, 224) and data["mean"] == (0.485, 0.456, 0.406)
    tf = mambaout.create_eval_transform(data)
    from PIL import Image

    img = Image.new("RGB", (320, 240), (128, 30, 200))
    assert tuple(tf(img).shape) == (3, 224, 224)
    assert create_model("mambaout_base_short_rw", device="meta").pretrained_cfg["crop_pct"] == 0.95


def test_unknown_model_and_bad_args():
    with pytest.raises(ValueError, match="unknown model 'mambaout_huge'"):
        create_model("mambaout_huge")
    with pytest.raises(TypeError):
        create_model("mambaout_test", not_a_model_arg=1)
    with pytest.raises(ValueError, match="token mixer"):
        create_model("mambaout_test", token_mixer="nope")


def test_drop_path_rises_linearly():
    model = create_model("mambaout_femto", drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.2) < 1e-6
    assert all(b >= a for a, b in zip(rates, rates[1:]))


def test_in_chans_and_channels_last_input():
    model = create_model("mambaout_test", in_chans=1).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1000)
    rgb = create_model("mambaout_test").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rgb(x), rgb(x.contiguous(memory_format=torch.channels_last)))


def test_bf16_autocast_matches_timm(timm_models):
    ref = timm_models("mambaout_test")
    model = create_model("mambaout_test").eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = model(x), ref(x)
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - theirs.float()).abs().max() < 0.05 * theirs.float().abs().max()


def test_conv_ratio_covering_the_whole_hidden_width():
    # conv_ratio = expansion_ratio leaves no identity channels: the block must still work.
    model = create_model("mambaout_test", conv_ratio=3.0)
    model(torch.randn(1, 3, 64, 64)).sum().backward()


def test_register_token_mixer_builds_and_trains_a_new_mixer():
    from torch import nn

    from mambaout.models.mixers import mixer_layout

    class Identity2d(nn.Module):  # a mixer of the block's own (NHWC) layout with a learnable scale
        def __init__(self, channels, kernel_size=7, device=None, dtype=None, scale=1.0):
            super().__init__()
            self.scale = nn.Parameter(torch.full((channels,), scale, device=device, dtype=dtype))

        def forward(self, x):
            assert x.dim() == 4 and x.shape[-1] == self.scale.shape[0]  # NHWC in
            return x * self.scale

    mambaout.register_token_mixer("test_scale")(Identity2d)
    mambaout.register_token_mixer("test_pool", layout="NCHW")(
        lambda channels, kernel_size=7, device=None, dtype=None: nn.AvgPool2d(3, 1, 1))
    try:
        assert {"test_scale", "test_pool"} <= set(mambaout.list_token_mixers())
        assert mixer_layout("test_pool") == "NCHW" and mixer_layout("test_scale") == "NHWC"
        model = create_model("mambaout_test", token_mixer="test_scale", mixer_kwargs={"scale": 0.5})
        assert isinstance(model.stages[0].blocks[0].conv, Identity2d)
        x = torch.randn(2, 3, 64, 64)
        model(x).sum().backward()
        assert model.stages[0].blocks[0].conv.scale.grad.abs().sum() > 0
        pooled = create_model("mambaout_test", token_mixer="test_pool").eval()
        with torch.no_grad():
            torch.testing.assert_close(pooled(x), pooled(x.clone()))  # NCHW mixer fed channels-first views
        with pytest.raises(ValueError, match="already registered"):
            mambaout.register_token_mixer("test_scale")(Identity2d)
        with pytest.raises(ValueError, match="layout must be"):
            mambaout.register_token_mixer("test_bad", layout="HWC")
    finally:
        from mambaout.models import mixers

        for name in ("test_scale", "test_pool"):
            mixers._MIXERS.pop(name, None)
            mixers._LAYOUTS.pop(name, None)
