"""The fused CPU inference path (mambaout.models.fast): the same function as the plain forward, taken only where
nothing can observe the difference, and with a working fallback when torch's private ops are missing.

Each "steps aside" case below attaches something a user might attach (a hook that changes an output, a replaced
or wrapped layer, a parametrization, a tracer, a mode) and checks both that the fused block did not run and that
the model's output is what the plain forward gives with that thing attached.
"""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import mambaout
from mambaout.models import fast
from mambaout.models.mambaout import Downsample, GatedCNNBlock

# Small versions of each architectural branch: (model name, overrides)
VARIANTS = [
    ("mambaout_femto", dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))),
    ("mambaout_base_tall_rw", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))),  # LayerScale, norm-first, 1.25
    ("mambaout_base_plus_rw", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))),  # SiLU, conv_ratio 1.5
    ("mambaout_femto", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40), conv_ratio=8 / 3)),  # no identity part
    ("mambaout_femto_attn", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))),
    ("mambaout_femto_ssm", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))),
]


def _model(name="mambaout_femto", overrides=VARIANTS[0][1], seed=0):
    torch.manual_seed(seed)
    m = mambaout.create_model(name, num_classes=7, **overrides).eval()
    with torch.no_grad():
        for mod in m.modules():
            if hasattr(mod, "gamma"):  # LayerScale starts at 1e-6: make its branch matter
                mod.gamma.fill_(0.5)
            if isinstance(mod, (nn.Linear, nn.Conv2d)):  # the init's std 0.02 leaves each block a whisper
                mod.weight.mul_(8.0)
    return m


def _reference(m, x):
    old = fast.set_fused_inference(False)
    try:
        with torch.inference_mode():
            return m(x)
    finally:
        fast.set_fused_inference(old)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of the fused block and downsample functions."""
    calls = {"block": 0, "downsample": 0}
    block, down = fast.block_forward, fast.downsample_forward

    def count_block(*a):
        calls["block"] += 1
        return block(*a)

    def count_down(*a):
        calls["downsample"] += 1
        return down(*a)

    monkeypatch.setattr(fast, "block_forward", count_block)
    monkeypatch.setattr(fast, "downsample_forward", count_down)
    return calls


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
@pytest.mark.parametrize("group_bytes", [1, 1 << 30], ids=["one-image-groups", "whole-batch"])
def test_fused_inference_matches_reference(name, overrides, group_bytes, monkeypatch, fused_calls):
    monkeypatch.setattr(fast, "_GROUP_BYTES", group_bytes)
    m = _model(name, overrides)
    x = torch.randn(3, 3, 64, 48)
    with torch.inference_mode():
        out = m(x)
    n_blocks = sum(len(s.blocks) for s in m.stages)
    assert fused_calls == {"block": n_blocks, "downsample": 3}
    torch.testing.assert_close(out, _reference(m, x), rtol=1e-4, atol=1e-5)


def test_without_onednn_fused_linear_the_public_ops_fallback_gives_the_same(monkeypatch, fused_calls):
    m = _model(*VARIANTS[1])  # LayerScale and a norm-first downsample: every branch of the fallback
    x = torch.randn(2, 3, 64, 64)
    ref = _reference(m, x)
    monkeypatch.setattr(fast, "capabilities", lambda: fast.Capabilities(fast._probe_observers(), False))
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", None)  # would raise if still called
    with torch.inference_mode():
        out = m(x)
    assert fused_calls["block"] == 4
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    m2 = _model(*VARIANTS[2])  # SiLU gate
    ref2 = _reference(m2, x)
    with torch.inference_mode():
        torch.testing.assert_close(m2(x), ref2, rtol=1e-4, atol=1e-5)


def test_without_a_way_to_see_modes_and_hooks_the_fused_path_is_off(monkeypatch, fused_calls):
    monkeypatch.setattr(fast, "capabilities", lambda: fast.Capabilities(None, True))
    m = _model()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        out = m(x)
    assert fused_calls == {"block": 0, "downsample": 0}
    torch.testing.assert_close(out, _reference(m, x))


def test_probes_find_this_torch_complete():
    caps = fast.capabilities()
    assert caps.observers is not None and caps.observers() is False
    assert caps.fused_linear == torch.backends.mkldnn.is_available()


def test_probe_of_a_broken_fused_linear_reports_it_missing(monkeypatch):
    def wrong(t, w, b, *args):
        return torch.zeros(t.shape[0], w.shape[0])

    wrong.binary = wrong
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", wrong)
    assert fast._probe_fused_linear() is False


# ------------------------------------------------------------------------------ steps aside where observed
def _flip_output(module, args, output):
    # A reordering of the last dim: no LayerNorm downstream can hide it, as it could hide a rescaling.
    return output.flip(-1)


def _attach_hook_fc2(m):
    return m.stages[0].blocks[0].fc2.register_forward_hook(_flip_output)


def _attach_pre_hook_norm(m):
    return m.stages[0].blocks[0].norm.register_forward_pre_hook(lambda mod, args: (args[0].flip(-1),))


def _attach_hook_on_block(m):
    return m.stages[0].blocks[0].register_forward_hook(_flip_output)


def _attach_hook_on_ls_identity(m):
    return m.stages[0].blocks[0].ls.register_forward_hook(_flip_output)


def _attach_hook_on_act(m):
    return m.stages[0].blocks[0].act.register_forward_hook(_flip_output)


def _attach_global_hook(m):
    return nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: out.flip(-1) if isinstance(mod, nn.Linear) else None)


def _patch_forward(m):
    fc1 = m.stages[0].blocks[0].fc1
    fc1.forward = lambda t: nn.functional.linear(t, fc1.weight * 2, fc1.bias)


def _replace_with_subclass(m):
    class ScaledLinear(nn.Linear):
        def forward(self, t):
            return super().forward(t) * 2

    blk = m.stages[0].blocks[0]
    new = ScaledLinear(blk.fc2.in_features, blk.fc2.out_features)
    new.load_state_dict(blk.fc2.state_dict())
    blk.fc2 = new


def _wrap_module(m):
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner(t) + 1.0

    blk = m.stages[0].blocks[0]
    blk.fc1 = Wrapped(blk.fc1)


def _parametrize(m):
    class Negate(nn.Module):
        def forward(self, w):
            return -w

    torch.nn.utils.parametrize.register_parametrization(m.stages[0].blocks[0].fc1, "weight", Negate())


def _train_drop_path_only(m):
    m.stages[0].blocks[0].drop_path = mambaout.models.mambaout.DropPath(0.5)
    m.stages[0].blocks[0].drop_path.train()


def _hook_downsample_conv(m):
    return m.stages[1].downsample.conv.register_forward_hook(_flip_output)


def _prune_downsample_conv(m):
    import torch.nn.utils.prune

    torch.nn.utils.prune.l1_unstructured(m.stages[1].downsample.conv, "weight", amount=0.5)  # a pre-hook


ATTACHMENTS = [_attach_hook_fc2, _attach_pre_hook_norm, _attach_hook_on_block, _attach_hook_on_ls_identity,
               _attach_hook_on_act, _attach_global_hook, _patch_forward, _replace_with_subclass, _wrap_module,
               _parametrize, _train_drop_path_only, _hook_downsample_conv, _prune_downsample_conv]


@pytest.mark.parametrize("attach", ATTACHMENTS, ids=[a.__name__.lstrip("_") for a in ATTACHMENTS])
def test_fused_path_steps_aside_for_what_users_attach(attach, fused_calls):
    m = _model()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        clean = m(x)
    torch.manual_seed(0)
    handle = attach(m)
    try:
        fused_calls.update(block=0, downsample=0)
        torch.manual_seed(1)
        with torch.inference_mode():
            out = m(x)
        n_blocks = sum(len(s.blocks) for s in m.stages)
        expected = {"_attach_global_hook": {"block": 0, "downsample": 0},
                    "_hook_downsample_conv": {"block": n_blocks, "downsample": 2},
                    "_prune_downsample_conv": {"block": n_blocks, "downsample": 2}}
        assert fused_calls == expected.get(attach.__name__, {"block": n_blocks - 1, "downsample": 3}), \
            "exactly the modules with the attachment run plain"
        torch.manual_seed(1)
        ref = _reference(m, x)
    finally:
        if handle is not None:
            handle.remove()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert (out - clean).abs().max() > 1e-3, "the attachment changes the output, and must be seen to"


def _autocast(m, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return m(x)


def _grad_enabled(m, x):
    with torch.enable_grad():
        return m(x)


def _flop_counter(m, x):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        return m(x)


def _function_mode(m, x):
    with torch.device("cpu"):
        return m(x)


def _jit_trace(m, x):
    return torch.jit.trace(m, x, check_trace=False)(x)


def _fx(m, x):
    return torch.fx.symbolic_trace(m)(x)


def _export(m, x):
    return torch.export.export(m, (x,)).module()(x)


def _training_mode(m, x):
    m.train()
    try:
        return m(x)
    finally:
        m.eval()


CONTEXTS = [_autocast, _grad_enabled, _flop_counter, _function_mode, _jit_trace, _fx, _export, _training_mode]


@pytest.mark.parametrize("context", CONTEXTS, ids=[c.__name__.lstrip("_") for c in CONTEXTS])
def test_fused_path_steps_aside_under_tracers_and_modes(context, fused_calls):
    m = _model()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = context(m, x)
    assert fused_calls == {"block": 0, "downsample": 0}
    tol = dict(rtol=0.05, atol=0.05) if context is _autocast else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.float(), _reference(m, x), **tol)


def test_fused_path_steps_aside_under_vmap(fused_calls):
    block = _model().stages[0].blocks[0]
    x = torch.randn(3, 2, 16, 16, 16)
    with torch.no_grad():
        out = torch.func.vmap(block)(x)
    assert fused_calls["block"] == 0
    torch.testing.assert_close(out, torch.stack([_reference(block, t) for t in x]), rtol=1e-4, atol=1e-5)


def test_input_of_another_dtype_gets_the_plain_paths_error(fused_calls):
    m = _model()
    with torch.inference_mode(), pytest.raises(RuntimeError):
        m(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))  # float32 weights
    assert fused_calls["block"] == 0


def test_traced_graphs_hold_no_fused_ops():
    m = _model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(m, x, check_trace=False)
    assert "mkldnn" not in str(traced.inlined_graph)
    assert "mkldnn" not in str(torch.export.export(m, (x,)).graph)


def test_fused_path_is_taken_by_a_bare_model_in_inference_mode(fused_calls):
    m = _model()
    with torch.inference_mode():
        m(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    assert fused_calls == {"block": 2 * 5, "downsample": 2 * 3}


def test_a_model_built_under_inference_mode_runs_the_fused_path(fused_calls):
    """Its weights are inference tensors, which have no version counter for the channels-last weight cache."""
    with torch.inference_mode():
        m = _model()
        x = torch.randn(1, 3, 64, 64)
        out = m(x)
    assert fused_calls["downsample"] == 3
    torch.testing.assert_close(out, _reference(m, x), atol=1e-5, rtol=1e-5)


def test_channels_last_conv_weight_cache_follows_weight_updates():
    m = _model()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = m(x)
    with torch.no_grad():
        m.stages[1].downsample.conv.weight.mul_(-1.0)  # in place: same storage, new version
        m.stages[2].downsample.conv.weight.data = m.stages[2].downsample.conv.weight.data * 2  # new storage
    with torch.inference_mode():
        after = m(x)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, _reference(m, x), rtol=1e-4, atol=1e-5)


def test_weight_cache_does_not_touch_the_module_or_keep_it_alive():
    import gc
    import weakref

    m = _model()
    with torch.inference_mode():
        m(torch.randn(1, 3, 64, 64))
    conv = m.stages[1].downsample.conv
    assert "_cl_weight" not in conv.__dict__ and conv in fast._CL_WEIGHTS
    ref = weakref.ref(conv)
    del m, conv
    gc.collect()
    assert ref() is None


def test_fused_inference_in_bfloat16_close_to_reference():
    m = _model().to(torch.bfloat16)
    x = torch.randn(2, 3, 64, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = m(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _reference(m, x).float(), rtol=0.05, atol=0.05)


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
    m = _model().train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    out.float().square().sum().backward()
    conv = m.stages[0].blocks[0].conv
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_gradient_checkpointing_gives_the_same_gradients():
    m = _model().train()
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

    m = _model()
    x = torch.randn(2, 3, 64, 64)
    counts = []
    for fused in (True, False):
        old = fast.set_fused_inference(fused)
        try:
            counter = FlopCounterMode(display=False)
            with counter, torch.inference_mode():
                m(x)
            counts.append(counter.get_total_flops())
        finally:
            fast.set_fused_inference(old)
    assert counts[0] == counts[1] > 0


def test_fused_block_on_an_empty_batch_returns_an_empty_map():
    block = _model().stages[0].blocks[0]
    x = torch.randn(0, 16, 16, 16)
    with torch.inference_mode():
        out = block(x)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape


def test_blocks_and_downsamples_are_what_the_checks_expect():
    m = _model()
    assert all(isinstance(b, GatedCNNBlock) for s in m.stages for b in s.blocks)
    assert all(isinstance(s.downsample, Downsample) for s in list(m.stages)[1:])
    x = torch.randn(1, 16, 16, 16)
    with torch.inference_mode():
        assert fast.block_ok(m.stages[0].blocks[0], x)
        assert not fast.block_ok(m.stages[0].blocks[0], x.to("meta"))
        assert not fast.block_ok(m.stages[0].blocks[0], x.double())
