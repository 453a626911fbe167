"""The tools people apply to a timm backbone, applied to ``mambaout.create_model`` and to timm's MambaOut with the
same weights: they must see the same model (hooks fire, MACs, features, quantized outputs, LoRA, CAMs agree).

Our plain forward runs the ops of timm's model in the same memory layouts, so where a tool makes the model run
its plain path the outputs agree to the last bit, and the comparisons below are exact.
"""
from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
from conftest import PAPER_MODELS
from torch import nn

import mambaout

# femto: the paper's block; base_tall_rw: LayerScale, norm-first downsample, the *_rw head; test: the smallest.
NAMES = ["mambaout_femto", "mambaout_base_tall_rw", "mambaout_test"]


@pytest.fixture
def pair(timm_models):
    """(ours, timm's) for a name, the same weights, both in eval mode."""

    def get(name):
        ref = timm_models(name)
        ours = mambaout.create_model(name).eval()
        ours.load_state_dict(ref.state_dict())
        return ours, ref

    return get


def _image(size=224, batch=1, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _record(model, kinds=(nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GELU)):
    """Forward hooks on every layer of these kinds, recording (name, output); returns the log and the handles."""
    log, handles = [], []
    for name, m in model.named_modules():
        if isinstance(m, kinds) and name.startswith(("stem", "stages")):
            handles.append(m.register_forward_hook(lambda mod, a, out, name=name: log.append((name, out.clone()))))
    return log, handles


@pytest.mark.parametrize("mode", ["inference", "no_grad", "train"])
def test_forward_hooks_fire_on_every_layer_with_timms_values(pair, mode):
    ours, ref = pair("mambaout_femto")
    x = _image(96, batch=2)
    logs = []
    for model in (ours, ref):
        log, handles = _record(model)
        model.train(mode == "train")
        ctx = {"inference": torch.inference_mode, "no_grad": torch.no_grad, "train": contextlib.nullcontext}[mode]
        with ctx():
            model(x)
        model.eval()
        for h in handles:
            h.remove()
        logs.append(log)
    names = [n for n, _ in logs[0]]
    assert names == [n for n, _ in logs[1]]
    blocks = sum(len(s.blocks) for s in ours.stages)
    assert sum(n.endswith(".fc1") for n in names) == sum(n.endswith(".fc2") for n in names) == blocks
    for (name, a), (_, b) in zip(*logs):
        assert torch.equal(a, b), name


def test_a_hook_that_changes_fc2_changes_the_model_as_in_timm(pair):
    ours, ref = pair("mambaout_femto")
    x = _image(96)
    outs = []
    for model in (ours, ref):
        h = model.stages[2].blocks[1].fc2.register_forward_hook(lambda m, a, out: out * 0)
        with torch.inference_mode():
            outs.append(model(x))
        h.remove()
    with torch.inference_mode():
        clean = ours(x)
    # the hooked block runs plain, the others fused: equal to float32 rounding
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    assert (outs[0] - clean).abs().max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_fvcore_counts_ours_as_timms(pair, name):
    fvcore = pytest.importorskip("fvcore.nn")
    ours, ref = pair(name)
    x = _image(224 if name != "mambaout_test" else 64)
    totals = []
    for model in (ours, ref):
        analysis = fvcore.FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        totals.append(analysis.total())
    assert totals[0] == totals[1] > 0


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_count_macs_equals_fvcore_on_our_model(name):
    fvcore = pytest.importorskip("fvcore.nn")
    model = mambaout.create_model(name).eval()
    analysis = fvcore.FlopCountAnalysis(model, _image())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert mambaout.count_macs(model) == analysis.total()


@pytest.mark.parametrize("backend", ["pytorch", "aten"])
@pytest.mark.parametrize("name", NAMES)
def test_ptflops_counts_ours_as_timms(pair, name, backend):
    ptflops = pytest.importorskip("ptflops")
    ours, ref = pair(name)
    size = 224 if name != "mambaout_test" else 64
    results = []
    for model in (ours, ref):
        with contextlib.redirect_stdout(io.StringIO()):
            macs, params = ptflops.get_model_complexity_info(
                model, (3, size, size), as_strings=False, print_per_layer_stat=False, backend=backend)
        results.append((macs, params))
    assert results[0] == results[1] and results[0][0] > 0


@pytest.mark.parametrize("name", NAMES)
def test_torchinfo_summary_of_ours_is_timms(pair, name):
    torchinfo = pytest.importorskip("torchinfo")
    ours, ref = pair(name)
    size = 224 if name != "mambaout_test" else 64
    stats = [torchinfo.summary(m, input_size=(1, 3, size, size), verbose=0) for m in (ours, ref)]
    assert stats[0].total_mult_adds == stats[1].total_mult_adds > 0
    assert stats[0].total_params == stats[1].total_params == mambaout.count_params(ours)
    # the layer table: the same layer types with the same shapes, in the same order
    rows = [[(type(layer.module).__name__, tuple(layer.output_size)) for layer in s.summary_list
             if not layer.children] for s in stats]
    assert rows[0] == rows[1]


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_fx_feature_extraction(pair, name):
    from torchvision.models.feature_extraction import create_feature_extractor

    ours, ref = pair(name)
    x = _image(96, batch=2)
    nodes = {f"stages.{i}": f"s{i}" for i in range(4)}
    feats = []
    for model in (ours, ref):
        extractor = create_feature_extractor(model, return_nodes=nodes)
        with torch.no_grad():
            feats.append(extractor(x))
    for k in nodes.values():
        assert torch.equal(feats[0][k], feats[1][k]), k


@pytest.mark.parametrize("name", NAMES)
def test_timm_fx_feature_graph_net(pair, name):
    from timm.models import FeatureGraphNet

    ours, ref = pair(name)
    x = _image(96, batch=2)
    outs = []
    for model in (ours, ref):
        net = FeatureGraphNet(copy.deepcopy(model), out_indices=(0, 1, 2, 3))
        with torch.no_grad():
            outs.append(net(x))
    assert [tuple(o.shape) for o in outs[0]] == [(2, 96 // i["reduction"], 96 // i["reduction"], i["num_chs"])
                                                 for i in ours.feature_info]  # NHWC, the models' output_fmt
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["mambaout_femto", "mambaout_base_tall_rw"])
def test_dynamic_quantization_gives_timms_quantized_outputs(pair, name):
    ours, ref = pair(name)
    x = _image(96, batch=2)
    outs = []
    for model in (ours, ref):
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        n_quantized = sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in q.modules())
        assert n_quantized == 2 * sum(len(s.blocks) for s in ours.stages) + 2  # fc1/fc2 per block, head fc's
        with torch.inference_mode():
            outs.append(q(x))
    assert torch.equal(outs[0], outs[1])
    with torch.inference_mode():
        assert (outs[0] - ours(x)).abs().max() > 0  # quantization did happen


def _lora(model, seed=1):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(copy.deepcopy(model),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], init_lora_weights=False))


@pytest.mark.parametrize("name", ["mambaout_femto", "mambaout_base_tall_rw"])
def test_peft_lora_changes_ours_exactly_as_timms(pair, name):
    pytest.importorskip("peft")
    ours, ref = pair(name)
    x = _image(96, batch=2)
    with torch.inference_mode():
        base = ref(x)
    outs = []
    for model in (ours, ref):
        pm = _lora(model).eval()
        assert sum("lora_A" in n for n, _ in pm.named_parameters()) == 2 * sum(len(s.blocks) for s in ours.stages)
        with torch.inference_mode():
            outs.append(pm(x))
    assert (outs[0] - base).abs().max() > 1e-3, "the adapters must change the output"
    assert torch.equal(outs[0], outs[1])


def test_peft_lora_trains_only_the_adapters(pair):
    pytest.importorskip("peft")
    ours, _ = pair("mambaout_test")
    pm = _lora(ours).train()
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    x = _image(64, batch=2)
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.1)
    pm(x).square().mean().backward()
    opt.step()
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    pm.eval()
    with torch.inference_mode():
        adapted = pm(x)
        assert not torch.allclose(adapted, ours(x))
    merged = pm.merge_and_unload()
    assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith(("fc1", "fc2")))
    with torch.inference_mode():  # merged back into plain layers: the fast path again, the same function
        torch.testing.assert_close(merged(x), adapted, rtol=1e-4, atol=1e-5)


def test_grad_cam_on_ours_equals_timms(pair):
    cam_mod = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours, ref = pair("mambaout_femto")
    x = _image(96)
    cams = []
    for model in (ours, ref):
        cam = cam_mod.GradCAM(model=model, target_layers=[model.stages[-1]],
                              reshape_transform=lambda t: t.permute(0, 3, 1, 2))
        cams.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(3)]))
    assert cams[0].shape == (1, 96, 96) and cams[0].max() > 0
    assert (cams[0] == cams[1]).all()
