"""The fused inference path of the Gated CNN block computes the same function as the plain ops.

Inference on CPU runs ``GatedCNNBlock._forward_fused`` (oneDNN GEMMs with fused bias/activation/residual, image
groups, channels-last conv weights); it is checked against the reference ops here, including the pieces only
some variants have (LayerScale, SiLU, norm-first downsample, no identity part, lab mixers).
"""
from __future__ import annotations

import threading

import pytest
import torch

import mambaout
from mambaout.models import mambaout as mm

# Small versions of each architectural branch: (model name, overrides)
VARIANTS = [
    ("mambaout_femto", dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))),
    ("mambaout_base_tall_rw", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))),  # LayerScale, norm-first, 1.25
    ("mambaout_base_plus_rw", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))),  # SiLU, conv_ratio 1.5
    ("mambaout_femto", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40), conv_ratio=8 / 3)),  # no identity part
    ("mambaout_femto_attn", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))),
    ("mambaout_femto_ssm", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))),
]


def _model(name, overrides, seed=0):
    torch.manual_seed(seed)
    m = mambaout.create_model(name, num_classes=7, **overrides).eval()
    with torch.no_grad():
        for mod in m.modules():  # LayerScale starts at 1e-6: make its branch matter
            if hasattr(mod, "gamma"):
                mod.gamma.fill_(0.5)
    return m


def _reference(m, x):
    old = mm.set_fused_inference(False)
    try:
        with torch.inference_mode():
            return m(x)
    finally:
        mm.set_fused_inference(old)


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
@pytest.mark.parametrize("group_bytes", [1, 1 << 30], ids=["one-image-groups", "whole-batch"])
def test_fused_inference_matches_reference(name, overrides, group_bytes, monkeypatch):
    monkeypatch.setattr(mm, "_GROUP_BYTES", group_bytes)
    m = _model(name, overrides)
    x = torch.randn(3, 3, 64, 48)
    calls = []
    orig = mm.GatedCNNBlock._forward_fused
    monkeypatch.setattr(mm.GatedCNNBlock, "_forward_fused", lambda self, x: calls.append(1) or orig(self, x))
    with torch.inference_mode():
        out = m(x)
    assert calls, "the fused path was not taken"
    ref = _reference(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_fused_inference_in_bfloat16_close_to_reference():
    m = _model(*VARIANTS[0]).to(torch.bfloat16)
    x = torch.randn(2, 3, 64, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = m(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _reference(m, x).float(), rtol=0.05, atol=0.05)


def test_fused_path_not_taken_with_autograd_or_tracing(monkeypatch):
    m = _model(*VARIANTS[0])
    calls = []
    orig = mm.GatedCNNBlock._forward_fused
    monkeypatch.setattr(mm.GatedCNNBlock, "_forward_fused", lambda self, x: calls.append(1) or orig(self, x))
    x = torch.randn(1, 3, 64, 64)
    m(x)  # grad enabled, eval mode
    with torch.no_grad():
        traced = torch.jit.trace(m, x, check_trace=False)  # the check re-runs the model untraced
    assert not calls
    assert "mkldnn" not in str(traced.inlined_graph)
    with torch.inference_mode():
        torch.testing.assert_close(traced(x), _reference(m, x), rtol=1e-4, atol=1e-5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
    assert not calls


def test_channels_last_conv_weight_cache_follows_weight_updates():
    m = _model(*VARIANTS[0])
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = m(x)
    with torch.no_grad():
        m.stages[1].downsample.conv.weight.mul_(-1.0)  # in place: same storage, new version
        m.stem.conv1.weight.data = m.stem.conv1.weight.data * 2  # new storage
    with torch.inference_mode():
        after = m(x)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, _reference(m, x), rtol=1e-4, atol=1e-5)


def test_fused_inference_is_thread_safe():
    m = _model(*VARIANTS[1])
    xs = [torch.randn(2, 3, 64, 64) for _ in range(4)]
    refs = [_reference(m, x) for x in xs]
    outs = [None] * 4

    def work(i):
        with torch.inference_mode():
            for _ in range(3):
                outs[i] = m(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_training_step_keeps_float32_gradients():
    m = _model(*VARIANTS[0]).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    out.float().square().sum().backward()
    conv = m.stages[0].blocks[0].conv
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_gradient_checkpointing_gives_the_same_gradients():
    m = _model(*VARIANTS[0]).train()
    x = torch.randn(2, 3, 64, 64)
    m(x).square().sum().backward()
    ref = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).square().sum().backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], rtol=1e-5, atol=1e-7, msg=k)


def test_flop_counting_sees_the_reference_ops():
    from torch.utils.flop_counter import FlopCounterMode

    m = _model(*VARIANTS[0])
    x = torch.randn(2, 3, 64, 64)
    counts = []
    for fused in (True, False):
        old = mm.set_fused_inference(fused)
        try:
            counter = FlopCounterMode(display=False)
            with counter, torch.inference_mode():
                m(x)
            counts.append(counter.get_total_flops())
        finally:
            mm.set_fused_inference(old)
    assert counts[0] == counts[1] > 0


def test_fused_block_on_an_empty_batch_returns_an_empty_map():
    block = _model(*VARIANTS[0]).stages[0].blocks[0]
    x = torch.randn(0, 16, 16, 16)
    with torch.inference_mode():
        out = block(x)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape
