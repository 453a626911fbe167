"""Layer-wise lr decay: ``mambaout.param_groups`` against timm's ``param_groups_layer_decay`` on timm's own model,
the lab mixers and the ViT, the dense tasks' backbone-vs-heads split, and the flag in every training command."""
import pytest
import torch

import mambaout
from mambaout.engine.optim import param_groups, scale_by_layer

PAPER = ["mambaout_femto", "mambaout_kobe", "mambaout_tiny", "mambaout_small", "mambaout_base"]


def _by_name(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in out, "a parameter in two groups"
            out[names[id(p)]] = (g.get("lr_scale", 1.0), g["weight_decay"])
    return out


@pytest.mark.parametrize("name", PAPER + ["mambaout_base_plus_rw"])
def test_every_scale_and_decay_equal_timms_on_its_own_model(name):
    import timm
    from timm.optim import param_groups_layer_decay

    ours = mambaout.create_model(name, device="meta")
    ref = timm.create_model(name)
    mine = _by_name(ours, mambaout.param_groups(ours, 0.05, layer_decay=0.8))
    theirs = _by_name(ref, param_groups_layer_decay(ref, 0.05, layer_decay=0.8))
    assert mine.keys() == theirs.keys() and len(mine) > 100
    assert all(mine[k][0] == pytest.approx(theirs[k][0], rel=1e-12) and mine[k][1] == theirs[k][1] for k in mine)
    scales = sorted({s for s, _ in mine.values()})
    assert scales[-1] == 1.0 and scales[0] < 0.8 ** 10, "the head at full lr, the stem many layers below"


@pytest.mark.parametrize("name", ["mambaout_femto_ssm", "mambaout_femto_ssm_cross", "mambaout_femto_attn",
                                  "mambaout_femto_causal_attn", "vit_tiny"])
def test_lab_mixers_and_the_vit_decay_by_depth(name):
    model = mambaout.create_model(name, num_classes=10)
    got = _by_name(model, param_groups(model, 0.05, layer_decay=0.7))
    assert len(got) == sum(1 for _ in model.parameters())
    head = [s for n, (s, _) in got.items() if n.startswith("head.fc")]
    first = [s for n, (s, _) in got.items() if n.startswith(("stem", "patch_embed", "pos_embed", "cls_token"))]
    assert head and set(head) == {1.0} and first and max(first) < 0.7 ** 5
    exempt = [n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False) or p.ndim <= 1]
    assert all(got[n][1] == 0.0 for n in exempt), "norms, biases and SSM A_log never decay"
    if name.startswith("vit"):
        assert got["pos_embed"][1] == 0.0 and got["cls_token"][1] == 0.0


def test_no_layer_decay_keeps_the_two_groups():
    model = mambaout.create_model("mambaout_test")
    groups = param_groups(model, 0.05)
    assert len(groups) == 2 and all("lr_scale" not in g for g in groups)


def test_dense_heads_train_at_the_full_lr_and_the_backbone_below():
    from mambaout.dense.backbone import MambaOutBackbone

    backbone = MambaOutBackbone("mambaout_test")
    model = torch.nn.ModuleDict({"backbone": backbone, "head": torch.nn.Linear(4, 4)})
    groups = [{"params": list(model.parameters()), "weight_decay": 0.05}]
    scaled = scale_by_layer(groups, backbone, 0.5)
    got = _by_name(model, scaled)
    assert got["head.weight"][0] == 1.0 and got["backbone.norms.0.weight"][0] == 0.5
    assert got["backbone.body.stem.conv1.weight"][0] == min(s for s, _ in got.values()) < 0.5 ** 5
    assert scale_by_layer(groups, backbone, None) is groups


@pytest.mark.parametrize("argv", [["train"], ["detect", "train"], ["segment", "train"]])
def test_every_training_command_takes_layer_decay(argv, capsys):
    from conftest import cli_in_process

    code, out, err = cli_in_process([*argv, "--layer-decay", "0.75", "--print-config"], capsys)
    assert code == 0, err
    assert "layer_decay: 0.75" in out
    code, _, err = cli_in_process([*argv, "--layer-decay", "1.5", "--print-config"], capsys)
    assert code == 2 and "layer_decay" in err and "(0, 1]" in err and len(err.strip().splitlines()) == 1


def test_training_applies_the_scales(small_digits, tmp_path):
    """The loop sets each group's lr to the schedule's lr times the group's scale (read back from the run's
    optimizer state)."""
    from mambaout.classify.config import resolve_config
    from mambaout.classify.train import train
    from mambaout.models import read_checkpoint

    cfg = resolve_config({"model": "mambaout_test", "data_dir": str(small_digits), "output": str(tmp_path / "r"),
                          "epochs": 1, "warmup_epochs": 0, "batch_size": 16, "workers": 0, "layer_decay": 0.6},
                         recipe="quickstart")
    train(cfg)
    groups = read_checkpoint(tmp_path / "r" / "last.pt")["optimizer"]["param_groups"]
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) > 5 and scales[-1] == 1.0
    base = {round(g["lr"] / g["lr_scale"], 12) for g in groups}
    assert len(base) == 1 and base.pop() > 0
