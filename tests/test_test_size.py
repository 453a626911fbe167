"""``mambaout eval --test-size``: the weights' test resolution and crop, as timm's 288 re-evaluation; a model
trained here is tested at the size it was trained at."""
import json

import torch
from conftest import cli_in_process

import mambaout
from mambaout.data.transforms import resolve_data_config


def test_the_rw_weights_carry_their_test_crop():
    cfg = mambaout.create_model("mambaout_base_wide_rw", device="meta").pretrained_cfg
    assert cfg["crop_pct"] == 0.95 and cfg["test_crop_pct"] == 1.0 and cfg["test_input_size"] == (3, 288, 288)
    test = resolve_data_config(mambaout.create_model("mambaout_base_wide_rw", device="meta"), use_test_size=True)
    assert test["input_size"] == (3, 288, 288) and test["crop_pct"] == 1.0


def test_eval_at_the_test_size(small_digits, tmp_path, capsys):
    torch.manual_seed(0)
    model = mambaout.create_model("mambaout_test", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    sizes = []
    for extra in ([], ["--test-size"]):
        code, out, err = cli_in_process(["eval", "--model", "mambaout_test", "--checkpoint", tmp_path / "w.pt",
                                         "--data-dir", small_digits / "val", "--workers", "0", "--output",
                                         tmp_path / "e.json", *extra], capsys)
        assert code == 0, err
        res = json.loads((tmp_path / "e.json").read_text())
        sizes.append((res["input_size"], res["crop_pct"]))
        assert f"at {res['input_size'][-1]}px" in out
    assert sizes == [([3, 224, 224], 1.0), ([3, 288, 288], 1.0)]


def test_a_model_trained_here_is_tested_at_its_training_size(small_digits, tmp_path, capsys):
    from mambaout.classify.config import resolve_config
    from mambaout.classify.train import train

    train(resolve_config({"model": "mambaout_test", "data_dir": str(small_digits), "output": str(tmp_path / "r"),
                          "epochs": 1, "warmup_epochs": 0, "batch_size": 16, "workers": 0}, recipe="quickstart"))
    code, out, err = cli_in_process(["eval", "--checkpoint", tmp_path / "r" / "last.pt", "--data-dir",
                                     small_digits / "val", "--workers", "0", "--test-size", "--output",
                                     tmp_path / "e.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["input_size"] == [3, 32, 32]
