"""The attention token mixers: full and causal self-attention in the Gated CNN block's mixer slot."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mambaout
from mambaout import count_macs, create_model
from mambaout.models.mixers import create_token_mixer
from mambaout.models.mixers.attention import (
    SDPA_CPU_FLOP_FORMULAS,
    AttentionMixer,
    CausalAttentionMixer,
    pick_num_heads,
)
from mambaout.models.zoo import VARIANTS

MIXERS = ["attn", "causal_attn"]


def test_registered_on_import():
    assert {"attn", "causal_attn", "conv"} <= set(mambaout.list_token_mixers())


@pytest.mark.parametrize("mixer", MIXERS)
def test_model_forward_backward(mixer):
    torch.manual_seed(0)
    model = create_model("mambaout_test", token_mixer=mixer, num_classes=5, drop_path_rate=0.1).train()
    out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    mixers = [b.conv for s in model.stages for b in s.blocks]
    cls = CausalAttentionMixer if mixer == "causal_attn" else AttentionMixer
    assert all(type(m) is cls and m.causal == (mixer == "causal_attn") for m in mixers)


@pytest.mark.parametrize("mixer", MIXERS)
def test_causality_in_raster_order(mixer):
    torch.manual_seed(0)
    m = create_token_mixer(mixer, 48).eval()
    x = torch.randn(2, 4, 5, 48)
    t = 7  # row 1, column 2
    y = x.clone()
    y.view(2, 20, 48)[:, t + 1:] += torch.randn(2, 20 - t - 1, 48)
    with torch.no_grad():
        a, b = m(x).reshape(2, 20, 48), m(y).reshape(2, 20, 48)
    assert a.shape == b.shape == (2, 20, 48)
    if mixer == "causal_attn":
        torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=1e-6)
    else:
        assert (a[:, :t + 1] - b[:, :t + 1]).abs().amax(-1).min() > 1e-4  # every early position sees the change
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().amax(-1).min() > 1e-4


def test_heads_for_widths_not_divisible_by_head_dim():
    assert [pick_num_heads(c) for c in (16, 32, 64, 96, 100, 120, 127, 192)] == [1, 1, 2, 3, 2, 3, 1, 6]
    assert pick_num_heads(64, head_dim=16) == 4
    for c in (100, 127):
        m = create_token_mixer("attn", c)
        assert m.num_heads * m.head_dim == c and m.head_dim >= 32
        assert m(torch.randn(1, 3, 3, c)).shape == (1, 3, 3, c)
    assert create_token_mixer("attn", 96, num_heads=4).num_heads == 4
    with pytest.raises(ValueError, match="divisor"):
        create_token_mixer("attn", 96, num_heads=5)
    model = create_model("mambaout_test", token_mixer="attn", mixer_kwargs={"head_dim": 16}, device="meta")
    assert [s.blocks[0].conv.num_heads for s in model.stages] == [1, 2, 3, 4]


def _attention_macs(c, n):
    return 4 * c * c * n + 2 * c * n * n  # qkv + proj, then q·kᵀ and attn·v


@pytest.mark.parametrize("mixer", MIXERS)
def test_count_macs_counts_the_attention_matmuls(mixer):
    m = create_token_mixer(mixer, 64)
    for h, w in ((4, 4), (8, 8), (8, 16)):
        assert count_macs(m, (h, w, 64)) == _attention_macs(64, h * w)


def test_model_macs_grow_quadratically_with_tokens():
    args = VARIANTS["mambaout_test"].args
    conv = create_model("mambaout_test", device="meta")
    attn = create_model("mambaout_test", token_mixer="attn", device="meta")

    def extra(side):
        # What swapping each 7×7 depthwise conv (49 MACs per position and channel) for attention adds.
        total = 0
        for depth, f in zip(args["depths"], attn.feature_info):
            n, c = (side // f["reduction"]) ** 2, f["num_chs"]
            total += depth * (_attention_macs(c, n) - 49 * c * n)
        return total

    diffs = {s: count_macs(attn, (3, s, s)) - count_macs(conv, (3, s, s)) for s in (64, 128)}
    assert diffs == {s: extra(s) for s in (64, 128)}
    quad = {s: sum(d * 2 * f["num_chs"] * (s // f["reduction"]) ** 4
                   for d, f in zip(args["depths"], attn.feature_info)) for s in (64, 128)}
    assert quad[128] == 16 * quad[64]  # 4× the tokens: 16× the attention matmuls
    assert diffs[128] > 4 * diffs[64]


def test_cpu_kernel_flop_formulas_match_the_meta_count():
    m = create_token_mixer("causal_attn", 64)
    x = torch.randn(2, 6, 5, 64)
    plain = FlopCounterMode(display=False)
    with plain:
        m(x)
    mapped = FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOP_FORMULAS)
    with mapped:
        m(x)
    # Without the formulas torch counts only the linears on a real CPU tensor; with them, what meta counts.
    assert plain.get_total_flops() == 2 * 2 * 4 * 64 * 64 * 30
    assert mapped.get_total_flops() // 2 // 2 == count_macs(m, (6, 5, 64)) == _attention_macs(64, 30)
