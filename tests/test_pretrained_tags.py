"""timm's pretrained tags (``name.tag``): every tag timm publishes for these models is listed, with its own input
size, crop and class count, and loads (through a local stand-in for the hub)."""
import dataclasses
import json

import pytest
import torch
from conftest import cli_in_process
from test_hub import Server, cache, server  # noqa: F401  (fixtures)

import mambaout
from mambaout.models import zoo


def _listed(capsys):
    code, out, err = cli_in_process(["list", "--pretrained", "--format", "json"], capsys)
    assert code == 0, err
    return {row["model"]: row for row in map(json.loads, out.splitlines())}


def test_every_tag_timm_publishes_is_listed_with_its_own_preprocessing(capsys):
    import timm
    from timm.models import get_pretrained_cfg

    listed = _listed(capsys)
    theirs = timm.list_pretrained("mambaout*")
    assert len(theirs) >= 12 and set(theirs) == set(listed)
    for name in theirs:
        ref, row = get_pretrained_cfg(name), listed[name]
        assert (row["classes"], row["input_size"], row["test_size"], row["crop_pct"], row["crop_mode"]) == (
            ref.num_classes, ref.input_size[-1], ref.test_input_size[-1], ref.crop_pct, ref.crop_mode or "center"), name
        assert row["test_crop_pct"] == (ref.test_crop_pct or ref.crop_pct), name


@pytest.mark.parametrize("name,classes,size,pool", [
    ("mambaout_base_plus_rw.sw_e150_in12k", 11821, 224, (7, 7)),
    ("mambaout_base_plus_rw.sw_e150_r384_in12k_ft_in1k", 1000, 384, (12, 12)),
    ("mambaout_tiny.in1k", 1000, 224, (7, 7)),
])
def test_a_tag_builds_its_own_head_and_preprocessing(name, classes, size, pool):
    model = mambaout.create_model(name, device="meta")
    cfg = model.pretrained_cfg
    assert model.num_classes == classes == cfg["num_classes"] and model.get_classifier().out_features == classes
    assert cfg["input_size"] == (3, size, size) and tuple(cfg["pool_size"]) == pool
    assert cfg["tag"] == name.split(".")[1] and cfg["hf_hub_id"] == f"timm/{name}"


def test_an_unknown_tag_is_one_line(capsys):
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'in22k' of mambaout_tiny; its tags: in1k"):
        mambaout.create_model("mambaout_tiny.in22k")
    code, _, err = cli_in_process(["eval", "--model", "mambaout_tiny.in22k", "--pretrained", "--data-dir", "x"],
                                  capsys)
    assert code == 2 and "its tags: in1k" in err and len(err.strip().splitlines()) <= 2, err


def test_a_tag_loads_its_own_weights_through_the_hub(server, cache, monkeypatch):  # noqa: F811
    from safetensors.torch import save

    torch.manual_seed(3)
    published = mambaout.create_model("mambaout_test", num_classes=7).eval()
    repo = "timm/mambaout_test.t7_r96"
    server.files[f"hub:{repo}/model.safetensors"] = (save(dict(published.state_dict())), "ok")
    variant = zoo.VARIANTS["mambaout_test"]
    tagged = zoo.Weights(hf_hub_id=repo, num_classes=7, input_size=(3, 96, 96), test_input_size=(3, 96, 96))
    monkeypatch.setitem(zoo.VARIANTS, "mambaout_test", dataclasses.replace(variant, more_weights=(tagged,)))
    monkeypatch.setenv("HF_ENDPOINT", server.base + "/hub")
    model = mambaout.create_model("mambaout_test.t7_r96", pretrained=True).eval()
    assert model.num_classes == 7 and model.pretrained_cfg["input_size"] == (3, 96, 96)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), published(x))
