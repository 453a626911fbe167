"""Every registered model traces: torch.fx.symbolic_trace, torch.export.export and torch.jit.trace give graphs
that compute what the model computes; torch.compile(fullgraph=True) compiles with no graph break in train and
eval mode (fullgraph turns a graph break into an error), and its gradients are the eager ones. These stop after
AOT autograd (backend "aot_eager"), where graph breaks and tracing errors show; tests/test_train.py compiles a
training run with inductor."""
from __future__ import annotations

import warnings

import pytest
import torch

import mambaout

# The lab's femto variants differ from their mambaout_test twins only in depth and width, and their unrolled
# scans make them the slowest to trace (45 s of CI together): their mixers are traced through the twins.
ALL = [n for n in mambaout.list_models()
       if not (n.startswith("mambaout_femto_") and n.replace("femto", "test") in mambaout.VARIANTS)]


def _build(name, **kw):
    torch.manual_seed(0)
    extra = {"img_size": 32} if mambaout.VARIANTS[name].builder == "vit" else {}
    return mambaout.create_model(name, num_classes=10, **extra, **kw).eval()


def _x(batch=2, size=32):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _eager(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_symbolic_trace_export_and_jit_trace(name):
    model = _build(name)
    x = _x()
    ref = _eager(model, x)
    gm = torch.fx.symbolic_trace(model)
    assert not any(n.op == "call_function" and "mkldnn" in str(n.target) for n in gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref, rtol=1e-4, atol=1e-5)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), ref, rtol=1e-4, atol=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated, still widely used
            traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(x), ref, rtol=1e-4, atol=1e-5)
        # traced graphs are not specialised to the values they saw
        x2 = _x() * 2
        torch.testing.assert_close(gm(x2), _eager(model, x2), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(traced(x2), _eager(model, x2), rtol=1e-4, atol=1e-5)


def test_fx_graph_calls_the_block_modules():
    gm = torch.fx.symbolic_trace(_build("mambaout_test"))
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for part in ("fc1", "conv", "act", "fc2"):
        assert f"stages.0.blocks.0.{part}" in called
    # timm's LayerNorm is traced through (FX keeps only torch.nn's own modules as leaves), as in timm's model
    assert "stages.0.blocks.0.norm.weight" in {n.target for n in gm.graph.nodes if n.op == "get_attr"}


def test_exported_program_runs_at_another_batch_size_with_a_dynamic_dim():
    model = _build("mambaout_test")
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (_x(batch=2),), dynamic_shapes=({0: batch},))
    x = _x(batch=5)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), _eager(model, x), rtol=1e-4, atol=1e-5)


def _compiled_matches(model, x, backend="aot_eager"):
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    if model.training:
        torch.manual_seed(3)
        compiled(x).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        torch.manual_seed(3)
        model(x).square().mean().backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-5, msg=n)
    else:
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


# Each branch of the architecture once: the paper's block; LayerScale, norm-first downsample, *_rw head; SiLU and
# conv_ratio 1.5; every lab mixer; the ViT.
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))
COMPILE_CASES = [
    ("mambaout_test", {}),
    ("mambaout_base_tall_rw", SMALL),
    ("mambaout_base_plus_rw", SMALL),
    ("mambaout_test_attn", {}),
    ("mambaout_test_causal_attn", {}),
    ("mambaout_test_ssm", {}),
    ("vit_tiny", dict(depth=2)),
]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name,kw", COMPILE_CASES, ids=[n for n, _ in COMPILE_CASES])
def test_compile_fullgraph(name, kw, mode):
    model = _build(name, **kw).train(mode == "train")
    if mode == "train":
        model.apply(lambda m: setattr(m, "drop_prob", 0.0) if hasattr(m, "drop_prob") else None)
    _compiled_matches(model, _x())


@pytest.mark.slow
def test_compile_fullgraph_cross_scan():
    # the four-direction scan (its orders and merge cover the bidirectional one's)
    model = _build("mambaout_test", token_mixer="ssm", mixer_kwargs={"scan": "cross"})
    _compiled_matches(model, _x(batch=1))
