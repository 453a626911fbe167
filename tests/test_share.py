"""Sharing (issue #21): folders in timm's hub layout that timm, transformers and mambaout all load with the same
logits, model cards from the run's own files, and the push to a loopback stand-in for the hub."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import cli_in_process, free_port
from hubstub import TOKEN, HubStub
from test_train import _quickstart_steps

import mambaout
from mambaout import CheckpointError, create_model, save_pretrained

pytestmark = pytest.mark.timeout(600)
LABELS = ["cat", "dog", "owl"]


def _logits(model, x):
    with torch.inference_mode():
        out = model(x)
    return getattr(out, "logits", out)


@pytest.fixture(scope="module")
def femto():
    torch.manual_seed(3)
    model = create_model("mambaout_femto", num_classes=3).eval()
    model.pretrained_cfg["label_names"] = list(LABELS)
    return model


@pytest.fixture(scope="module")
def femto_folder(femto, tmp_path_factory):
    return save_pretrained(femto, tmp_path_factory.mktemp("share") / "femto-pets")


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_folder_has_timm_layout_and_loads_in_timm_transformers_and_ours(femto, femto_folder):
    import timm
    from transformers import AutoModelForImageClassification

    assert sorted(p.name for p in femto_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((femto_folder / "config.json").read_text())
    assert config["architecture"] == "mambaout_femto" and config["num_classes"] == 3
    assert config["label_names"] == LABELS and config["pretrained_cfg"]["num_classes"] == 3
    assert "tag" not in config["pretrained_cfg"], "a fine-tuned model is not the in1k weights"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ref = _logits(femto, x)
    ours = create_model(f"local-dir:{femto_folder}").eval()
    assert torch.equal(_logits(ours, x), ref)
    assert torch.equal(_logits(mambaout.from_pretrained(femto_folder).eval(), x), ref)
    assert ours.pretrained_cfg["label_names"] == LABELS
    theirs = timm.create_model(f"local-dir:{femto_folder}", pretrained=True).eval()
    torch.testing.assert_close(_logits(theirs, x), ref, atol=1e-5, rtol=1e-5)
    assert theirs.pretrained_cfg["label_names"] == LABELS
    wrapped = AutoModelForImageClassification.from_pretrained(str(femto_folder)).eval()
    torch.testing.assert_close(_logits(wrapped, x), ref, atol=1e-5, rtol=1e-5)
    assert [wrapped.config.id2label[i] for i in range(3)] == LABELS


def test_model_card_of_a_model_in_memory(femto_folder):
    card = (femto_folder / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    assert {"timm", "mambaout", "mambaout_femto"} <= set(meta["tags"])
    assert "| classes | 3 |" in card and "cat, dog, owl" in card
    assert f'timm.create_model("local-dir:{femto_folder}", pretrained=True)' in card
    assert "Not recorded" in card, "a model from memory has no run to describe"


def test_timm_save_for_hf_folders_load_into_ours(tmp_path):
    import timm

    torch.manual_seed(1)
    theirs = timm.create_model("mambaout_femto", num_classes=4).eval()
    x = torch.randn(1, 3, 224, 224)
    for safe in (True, False):  # model.safetensors, and the pickle pytorch_model.bin (read with weights_only)
        folder = tmp_path / f"timm-{safe}"
        timm.models.save_for_hf(theirs, folder, safe_serialization=safe,
                                model_config={"label_names": ["a", "b", "c", "d"]})
        ours = create_model(f"local-dir:{folder}").eval()
        torch.testing.assert_close(_logits(ours, x), _logits(theirs, x), atol=1e-5, rtol=1e-5)
        assert ours.pretrained_cfg["label_names"] == ["a", "b", "c", "d"] and ours.num_classes == 4


def test_a_lab_model_keeps_its_mixer(tmp_path):
    torch.manual_seed(2)
    model = create_model("mambaout_test", token_mixer="attn", num_classes=2).eval()
    folder = save_pretrained(model, tmp_path / "lab")
    config = json.loads((folder / "config.json").read_text())
    assert config["mambaout"]["model_args"]["token_mixer"] == "attn"
    back = create_model(f"local-dir:{folder}").eval()
    assert back.token_mixer == "attn"
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_logits(back, x), _logits(model, x))
    assert "only mambaout loads it" in (folder / "README.md").read_text()


def _copy(folder, dest):
    import shutil

    shutil.copytree(folder, dest)
    return dest


@pytest.mark.parametrize("change,needle", [
    (lambda c: c.update(num_classes=5), "config.json says num_classes=5, but model.safetensors's classifier has 3"),
    (lambda c: c.update(architecture="mambaout_kobe"), "config.json describes mambaout_kobe, but"),
    (lambda c: c.update(architecture="resnet50"), "architecture 'resnet50' is not a model this package builds"),
    (lambda c: c.pop("architecture"), "has no 'architecture'"),
    (None, "is not readable JSON"),
])
def test_a_mismatched_folder_is_one_clear_line(femto_folder, tmp_path, change, needle):
    folder = _copy(femto_folder, tmp_path / "bad")
    path = folder / "config.json"
    if change is None:
        path.write_text("{not json")
    else:
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        create_model(f"local-dir:{folder}")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_missing_pieces_are_named(femto_folder, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="has no config.json"):
        create_model(f"local-dir:{tmp_path}")
    folder = _copy(femto_folder, tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has config.json but no weights"):
        create_model(f"local-dir:{folder}")
    code, _, err = cli_in_process(["predict", "--checkpoint", f"local-dir:{folder}", str(tmp_path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no weights" in err, err


# ---------------------------------------------------------------------------------------------------- the hub
@pytest.fixture
def hub(monkeypatch, tmp_path):
    stub = HubStub()
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield stub
    stub.close()


def _checkpoint(tmp_path, name="mambaout_test"):
    """A run folder as 'mambaout train' leaves it: best.pt, config.yaml, summary.json, eval.json."""
    torch.manual_seed(4)
    model = create_model(name, num_classes=3).eval()
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"model": name, "data_dir": "data/pets", "epochs": 7, "lr": 0.002, "batch_size": 16, "recipe": "finetune"}
    torch.save({"model": model.state_dict(), "model_name": name, "model_args": {"drop_rate": 0.0},
                "class_names": LABELS, "config": cfg,
                "pretrained_cfg": {**model.pretrained_cfg, "label_names": LABELS, "num_classes": 3}}, run / "best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "summary.json").write_text(json.dumps({"epoch": 7, "best_top1": 91.25, "top1": 90.0, "top5": 100.0}))
    (run / "eval.json").write_text(json.dumps({"top1": 91.25, "top5": 100.0, "loss": 0.3, "images": 80,
                                               "input_size": [3, 64, 64], "crop_pct": 1.0}))
    return run, model


def test_push_to_hub_from_a_run_then_load_it_back(hub, tmp_path, capsys):
    run, model = _checkpoint(tmp_path)
    code, out, err = cli_in_process(["push-to-hub", run, "me/pets", "--private", "--revision", "dev"], capsys)
    assert code == 0, err
    assert "pushed" in out and "me/pets" in out
    assert hub.repos["me/pets"]["private"] is True
    files = hub.files("me/pets", "dev")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    card = files["README.md"].decode()
    meta = _front_matter(card)
    assert meta["datasets"] == ["pets"]
    results = meta["model-index"][0]["results"]
    assert results[0]["metrics"][0]["value"] == 91.25
    assert "| epochs | 7 |" in card and "| lr | 0.002 |" in card
    assert 'mambaout.create_model("hf-hub:me/pets")' in card
    back = mambaout.from_pretrained("me/pets@dev").eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_logits(back, x), _logits(model, x))
    assert back.pretrained_cfg["label_names"] == LABELS


def test_hf_hub_loads_a_repo_as_timm_publishes_it(hub, tmp_path):
    """timm's own MambaOut repositories are folders written by its save_for_hf; one served by the stand-in loads
    with timm's logits, at a revision too."""
    import timm

    torch.manual_seed(6)
    theirs = timm.create_model("mambaout_femto").eval()
    folder = tmp_path / "published"
    timm.models.save_for_hf(theirs, folder, safe_serialization=True)
    hub.repos["timm/mambaout_femto.in1k"] = {"private": False, "branches": {
        "main": {p.name: p.read_bytes() for p in folder.iterdir()}}}
    ours = create_model("hf-hub:timm/mambaout_femto.in1k").eval()
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(_logits(ours, x), _logits(theirs, x), atol=1e-5, rtol=1e-5)
    assert ours.num_classes == 1000 and ours.pretrained_cfg["crop_pct"] == theirs.pretrained_cfg["crop_pct"]
    with pytest.raises(mambaout.DownloadError, match="timm/mambaout_femto.in1k"):
        create_model("hf-hub:timm/mambaout_femto.in1k@no-such-branch")


@pytest.mark.parametrize("setup,needle", [
    ("no token", "no Hugging Face token"),
    ("no network", "ConnectError"),
    ("wrong token", "401"),
])
def test_push_failures_are_one_line(hub, tmp_path, monkeypatch, capsys, setup, needle):
    run, _ = _checkpoint(tmp_path)
    if setup == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "no-home"))  # no saved token either
        monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    elif setup == "no network":
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    else:
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    before = sorted(p.name for p in run.iterdir())
    code, _, err = cli_in_process(["push-to-hub", run, "me/pets"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert sorted(p.name for p in run.iterdir()) == before, "nothing local is touched"
    assert "me/pets" not in hub.repos or not hub.files("me/pets")


def test_push_refuses_a_bad_repo_id(tmp_path, capsys):
    run, _ = _checkpoint(tmp_path)
    code, _, err = cli_in_process(["push-to-hub", run, "just-a-name"], capsys)
    assert code == 2 and "must be ORG/NAME" in err


def _tiny_train(tmp_path, small_digits, *extra):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("model: mambaout_test\nimg_size: 32\nepochs: 1\nwarmup_epochs: 0\nbatch_size: 32\n"
                      "mixup: 0.0\ncutmix: 0.0\nauto_augment: null\nreprob: 0.0\nworkers: 0\n")
    return ["train", "--recipe", recipe, "--data-dir", small_digits, "--output", tmp_path / "run", *extra]


@pytest.mark.slow
def test_train_push_to_hub(hub, tmp_path, small_digits, capsys):
    code, out, err = cli_in_process(_tiny_train(tmp_path, small_digits, "--push-to-hub", "me/digits"), capsys)
    assert code == 0, err
    assert "pushed" in out
    card = hub.files("me/digits")["README.md"].decode()
    assert "## Metrics" in card and "(summary.json)" in card
    assert "| epochs | 1 |" in card
    back = create_model("hf-hub:me/digits").eval()
    assert back.num_classes == 10


@pytest.mark.slow
def test_train_keeps_the_run_when_the_push_fails(hub, tmp_path, small_digits, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    code, out, err = cli_in_process(_tiny_train(tmp_path, small_digits, "--push-to-hub", "me/digits"), capsys)
    assert code == 1
    assert "done: best top-1" in out
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    line = [ln for ln in err.splitlines() if "error" in ln]
    assert len(line) == 1 and "push it later with 'mambaout push-to-hub" in line[0], err


# ------------------------------------------------------------------------------------ the CLI's --format hf
@pytest.mark.slow
@pytest.mark.learning_run("quickstart", _quickstart_steps)
def test_export_hf_of_the_quickstart_run(learning_runs, tmp_path, capsys):
    import timm

    root, (_, train_run, _) = learning_runs.result("quickstart")
    assert train_run.returncode == 0, train_run.stderr[-2000:]
    out = tmp_path / "digits-femto"
    code, stdout, err = cli_in_process(["export", "--checkpoint", root / "run" / "best.pt", "--format", "hf",
                                        "--output", out, "--repo-id", "me/digits-femto"], capsys)
    assert code == 0, err
    assert "parity" in stdout
    summary = json.loads((root / "run" / "summary.json").read_text())
    card = (out / "README.md").read_text()
    assert f"{summary['best_top1']:.2f}%" in card and "| recipe | quickstart |" in card
    assert _front_matter(card)["datasets"] == ["digits"]
    x = torch.randn(2, 3, 32, 32)
    ours = create_model(f"local-dir:{out}").eval()
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    torch.testing.assert_close(_logits(theirs, x), _logits(ours, x), atol=1e-5, rtol=1e-5)
    images = sorted((root / "digits" / "val" / "3").iterdir())[:2]
    code, a, err = cli_in_process(["predict", *images, "--checkpoint", f"local-dir:{out}", "--json"],
                                  capsys)
    assert code == 0, err
    code, b, _ = cli_in_process(["predict", *images, "--checkpoint", root / "run" / "best.pt", "--json"],
                                capsys)
    assert a == b


def test_importing_mambaout_exposes_the_share_api():
    assert callable(mambaout.save_pretrained) and callable(mambaout.push_to_hub)
    assert issubclass(mambaout.ShareError, RuntimeError)


@pytest.mark.parametrize("flags,needle", [(["--img-size", "64"], "--img-size does not apply to --format hf"),
                                          (["--opset", "17"], "--opset does not apply to --format hf"),
                                          (["--int8", "--calib-dir", "x"], "--int8 works with --format onnx")])
def test_export_hf_refuses_the_flags_of_graph_formats(tmp_path, capsys, flags, needle):
    code, _, err = cli_in_process(["export", "--model", "mambaout_test", "--checkpoint", tmp_path / "none.pt",
                                   "--format", "hf", "--output", tmp_path / "out", *flags], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()
