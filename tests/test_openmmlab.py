"""mmdet / mmseg registration (issue #21): the backbone registers, builds from the shipped configs through
mmengine's registry, and runs with its per-stage norms, frozen stages and any checkpoint layout. mmcv-lite has no
compiled ops, so the full detector and segmentor are built only where mmcv's ``_ext`` imports."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import to_official_layout

mmengine = pytest.importorskip("mmengine", reason="OpenMMLab is not installed (tests/requirements-openmmlab.txt)")

from mmengine.config import Config  # noqa: E402

import mambaout  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DET = {s: CONFIGS / "mmdet" / f"mask-rcnn_mambaout-{s}_fpn_1x_coco.py" for s in ("tiny", "small", "base")}
SEG = {s: CONFIGS / "mmseg" / f"upernet_mambaout-{s}_512x512_160k_ade20k.py" for s in ("tiny", "small", "base")}
HAS_MMCV_OPS = importlib.util.find_spec("mmcv._ext") is not None if importlib.util.find_spec("mmcv") else False


@pytest.fixture(scope="module")
def openmmlab():
    from mambaout.integrations import openmmlab

    return openmmlab


@pytest.mark.parametrize("package", ["mmdet", "mmseg"])
def test_importing_registers_the_backbone(openmmlab, package):
    pytest.importorskip(package)
    registry = importlib.import_module(f"{package}.registry").MODELS
    assert registry.module_dict["MambaOut"] is openmmlab.MambaOut
    assert package in openmmlab.REGISTERED
    openmmlab.register()  # a second import (two configs in one process) changes nothing
    assert registry.module_dict["MambaOut"] is openmmlab.MambaOut


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_shipped_configs_carry_the_paper_settings_and_build(openmmlab, size):
    from mmengine.registry import MODELS

    det, seg = Config.fromfile(str(DET[size])), Config.fromfile(str(SEG[size]))
    for cfg in (det, seg):
        assert cfg.custom_imports["imports"] == ["mambaout.integrations.openmmlab"]
        assert cfg.model.backbone.type == "MambaOut" and cfg.model.backbone.arch == f"mambaout_{size}"
        assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.optimizer.lr == 1e-4
        assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.train_dataloader.batch_size * 8 == 16
    assert det.train_cfg.max_epochs == 12 and det.param_scheduler[-1].milestones == [8, 11]
    assert seg.train_cfg.max_iters == 160000 and seg.model.test_cfg.mode == "whole"
    assert seg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert seg.model.backbone.drop_path_rate == {"tiny": 0.3, "small": 0.3, "base": 0.6}[size]
    backbone = MODELS.build({**det.model.backbone, "pretrained": False}).eval()
    assert isinstance(backbone, openmmlab.MambaOut)
    assert backbone.out_channels == det.model.neck.in_channels == seg.model.decode_head.in_channels
    assert seg.model.auxiliary_head.in_channels == backbone.out_channels[2]
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert isinstance(feats, tuple) and [f.shape[1] for f in feats] == backbone.out_channels
    assert [64 // f.shape[-1] for f in feats] == [4, 8, 16, 32]
    assert len(backbone.norms) == 4, "a LayerNorm on every stage output"


def test_frozen_stages_and_a_checkpoint_of_any_layout(openmmlab, tmp_path):
    torch.manual_seed(0)
    source = mambaout.create_model("mambaout_test").eval()
    path = tmp_path / "official.pth"
    torch.save({"model": to_official_layout(source.state_dict())}, path)
    bb = openmmlab.MambaOut(arch="mambaout_test", frozen_stages=1, init_cfg=dict(type="Pretrained", checkpoint=path))
    bb.init_weights()  # what mmengine calls: the weights are already in
    own = bb.body.state_dict()
    for k, v in source.state_dict().items():
        if k in own:
            assert torch.equal(own[k], v), k
    bb.train()
    for module in (bb.body.stem, bb.body.stages[0], bb.body.stages[1]):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert bb.body.stages[2].training and all(p.requires_grad for p in bb.body.stages[2].parameters())


def test_an_unsupported_init_cfg_is_one_line(openmmlab):
    with pytest.raises(ValueError, match="init_cfg type 'Kaiming' is not supported"):
        openmmlab.MambaOut(arch="mambaout_test", init_cfg=dict(type="Kaiming"))


@pytest.mark.skipif(not HAS_MMCV_OPS, reason="the full Mask R-CNN and UperNet need mmcv's compiled ops (mmcv._ext); "
                                             "mmcv-lite has none")
@pytest.mark.parametrize("which", ["det", "seg"])
def test_full_detector_and_segmentor_forward(openmmlab, which):
    cfg = Config.fromfile(str((DET if which == "det" else SEG)["tiny"]))
    cfg.model.backbone.pretrained = False
    if which == "det":
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
        cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type="BN", requires_grad=True)
    register_all_modules()
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128), mode="tensor")
    assert out is not None
