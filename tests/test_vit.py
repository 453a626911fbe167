"""The plain ViT of Figure 3b: DeiT's sizes, causal attention, and MambaOut's model contract."""
import pytest
import torch

import mambaout
from mambaout import count_macs, count_params, create_model
from mambaout.models.vit import VisionTransformer
from mambaout.models.zoo import VARIANTS


@pytest.mark.parametrize("name,params", [("vit_tiny", 5_717_416), ("vit_small", 22_050_664)])
def test_deit_param_counts_exact(name, params):
    for causal in (False, True):
        assert count_params(create_model(name, causal=causal, device="meta")) == params
    assert VARIANTS[name].params == params


@pytest.mark.parametrize("name", ["vit_tiny", "vit_small"])
def test_gmacs_match_deit(name):
    assert abs(count_macs(create_model(name, device="meta")) / 1e9 - VARIANTS[name].gmacs) <= 0.01


def test_zoo_records_figure_3b():
    tiny, small = VARIANTS["vit_tiny"], VARIANTS["vit_small"]
    assert (tiny.top1_paper, tiny.extra["top1_paper_causal"]) == (72.2, 70.6)
    assert (small.top1_paper, small.extra["top1_paper_causal"]) == (79.8, 78.9)
    assert tiny.weights is None and tiny.builder == "vit"
    assert {"vit_tiny", "vit_small"} <= set(mambaout.list_models())
    assert mambaout.list_models("vit_*") == ["vit_tiny", "vit_small"]


def test_meta_device_and_cfg():
    model = create_model("vit_small", device="meta", causal=True)
    assert isinstance(model, VisionTransformer) and model.causal
    assert all(p.device.type == "meta" for p in model.parameters())
    cfg = model.pretrained_cfg
    assert model.default_cfg == cfg and cfg["input_size"] == (3, 224, 224) and cfg["fixed_input_size"]
    model.default_cfg = {**cfg, "crop_pct": 0.9}
    assert model.pretrained_cfg["crop_pct"] == 0.9
    model.pretrained_cfg = cfg
    assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head.fc"
    assert create_model("vit_tiny", img_size=64, device="meta").pretrained_cfg["input_size"] == (3, 64, 64)
    assert model.num_features == model.head_hidden_size == 384 and model.num_classes == 1000


@pytest.mark.parametrize("causal", [False, True])
def test_forward_backward_small(causal):
    torch.manual_seed(0)
    model = create_model("vit_tiny", img_size=64, num_classes=5, causal=causal, drop_path_rate=0.1).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def _pair(seed=0):
    torch.manual_seed(seed)
    full = create_model("vit_tiny", img_size=64, depth=3).eval()
    causal = create_model("vit_tiny", img_size=64, depth=3, causal=True).eval()
    causal.load_state_dict(full.state_dict())  # one state-dict layout for both
    return full, causal


def test_causal_patches_do_not_see_later_patches():
    full, causal = _pair()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., 48:, 48:] = torch.randn(1, 3, 16, 16)  # the last patch in raster order (of 4×4)
    with torch.no_grad():
        c, cy = causal.forward_features(x), causal.forward_features(y)
        f, fy = full.forward_features(x), full.forward_features(y)
    assert c.shape == f.shape == (1, 17, 192)  # class token first in both outputs
    torch.testing.assert_close(c[:, 1:16], cy[:, 1:16], rtol=0, atol=1e-6)  # patches 0..14 unchanged
    assert (c[:, 16] - cy[:, 16]).abs().max() > 1e-3  # the changed patch itself
    assert (c[:, 0] - cy[:, 0]).abs().max() > 1e-3  # the class token, last in the sequence, sees it
    assert (f[:, 1:16] - fy[:, 1:16]).abs().amax(-1).min() > 1e-4  # full attention: every patch sees it


def test_class_token_differs_between_causal_and_full():
    full, causal = _pair()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f, c = full.forward_features(x), causal.forward_features(x)
        assert (f[:, 0] - c[:, 0]).abs().max() > 1e-3
        assert (full(x) - causal(x)).abs().max() > 1e-3
        # The first patch sees only itself under the mask: it cannot equal its fully-visible output.
        assert (f[:, 1] - c[:, 1]).abs().max() > 1e-3
    assert [b.attn.causal for b in causal.blocks] == [True] * 3


def test_head_contract():
    torch.manual_seed(0)
    model = create_model("vit_tiny", img_size=32, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats[:, 0])
        model.reset_classifier(7)
        assert model(x).shape == (2, 7) and model.num_classes == 7
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), feats[:, 1:].mean(1))
        model.reset_classifier(0, "")
        assert model(x).shape == (2, 5, 192)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "max")
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}


def test_input_size_checks_and_resizing():
    torch.manual_seed(0)
    model = create_model("vit_tiny", img_size=32, depth=2).eval()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 48, 48))
    model.set_input_size(48)
    assert model.pos_embed.shape == (1, 10, 192) and model(torch.randn(1, 3, 48, 48)).shape == (1, 1000)
    dyn = create_model("vit_tiny", img_size=32, depth=2, dynamic_img_size=True).eval()
    assert dyn(torch.randn(1, 3, 40, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create_model("vit_tiny", img_size=50, device="meta")
    with pytest.raises(TypeError):
        create_model("vit_tiny", not_a_model_arg=1, device="meta")


@pytest.mark.parametrize("causal", [False, True])
def test_grad_checkpointing_and_intermediates(causal):
    torch.manual_seed(0)
    model = create_model("vit_tiny", img_size=32, depth=4, causal=causal).train()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), ref)
    model.eval()
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=2)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [tuple(t.shape) for t in inter] == [(2, 192, 2, 2)] * 2
        nlc = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(nlc[0], final[:, 1:])
    assert [f["reduction"] for f in model.feature_info] == [16] * 4


def test_checkpoint_round_trip_and_fine_tune(tmp_path):
    torch.manual_seed(0)
    src = create_model("vit_tiny", img_size=32, depth=2, num_classes=10).eval()
    path = tmp_path / "vit.pt"
    torch.save(src.state_dict(), path)
    same = create_model("vit_tiny", img_size=32, depth=2, causal=True, checkpoint_path=path)
    assert same.num_classes == 10
    torch.testing.assert_close(same.state_dict(), src.state_dict())
    with pytest.warns(UserWarning, match="classifier"):
        tuned = create_model("vit_tiny", img_size=32, depth=2, checkpoint_path=path, num_classes=3)
    assert tuned.head.fc.out_features == 3
    torch.testing.assert_close(tuned.pos_embed, src.pos_embed)
    gray = create_model("vit_tiny", img_size=32, depth=2, checkpoint_path=path, in_chans=1)
    torch.testing.assert_close(gray.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))


def test_features_only_is_mambaout_only():
    with pytest.raises(ValueError, match="features_only"):
        create_model("vit_tiny", features_only=True)
