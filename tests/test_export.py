"""ONNX and TorchScript export: parity with PyTorch at several batch sizes, metadata, atomic writes, the CLI."""
import argparse
import os
import re

import numpy as np
import pytest
import torch

from mambaout import create_model
from mambaout.cli.infer import add_export_args, cmd_export
from mambaout.infer.export import (
    OnnxRunner,
    export_model,
    load_exported,
    parity_check,
    read_onnx_metadata,
    read_torchscript_metadata,
)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TOL = 1e-4


def perturbed(name: str, seed: int = 0) -> torch.nn.Module:
    """A model whose norms, biases and layer scales are far from their init, so parity is not trivially met."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith(("weight", "gamma")) else 0.0))
    return model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", ["mambaout_test", "mambaout_femto"])
def test_exported_model_matches_pytorch_at_batch_1_and_3(name, fmt, tmp_path):
    model = perturbed(name)
    path = export_model(model, fmt, tmp_path / f"m.{fmt}", img_size=64)
    assert path.is_file() and path.stat().st_size > 0
    exported = load_exported(path, fmt)
    gen = torch.Generator().manual_seed(7)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64, generator=gen)
        with torch.no_grad():
            expected = model(x)
            got = exported(x)
        assert got.shape == (batch, 1000)
        diff = (got - expected).abs().max().item()
        assert diff < TOL, f"{name} {fmt} batch {batch}: max abs diff {diff}"
    res = parity_check(model, path, fmt)
    assert set(res) == {"random_b1", "random_b3", "real"} and res["real"] is None
    assert res["random_b1"] < TOL and res["random_b3"] < TOL


def test_parity_check_on_real_images_and_catches_a_different_model(tmp_path):
    model = perturbed("mambaout_test")
    path = export_model(model, "onnx", tmp_path / "m.onnx", img_size=64)
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    assert parity_check(model, path, "onnx", images)["real"] < TOL
    other = perturbed("mambaout_test", seed=1)
    assert parity_check(other, path, "onnx", images)["real"] > 1e-2


def test_onnx_metadata_round_trips(tmp_path):
    model = perturbed("mambaout_test")
    labels = ["cat", "dog", "ünïcode label", 'quote " comma ,']
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": labels, "mean": (0.5, 0.4, 0.3),
                            "std": (0.2, 0.25, 0.3), "crop_pct": 0.875, "interpolation": "bilinear"}
    path = export_model(model, "onnx", tmp_path / "m.onnx", img_size=(48, 80))
    meta = read_onnx_metadata(path)
    assert meta["model_name"] == "mambaout_test"
    assert meta["input_size"] == [3, 48, 80]
    assert meta["label_names"] == labels
    assert meta["mean"] == pytest.approx([0.5, 0.4, 0.3]) and meta["std"] == pytest.approx([0.2, 0.25, 0.3])
    assert meta["crop_pct"] == pytest.approx(0.875) and meta["interpolation"] == "bilinear"
    assert meta["num_classes"] == 1000 and meta["input_name"] == "image" and meta["output_name"] == "logits"
    # Stored as JSON strings, as the ONNX format requires strings.
    import onnx

    raw = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert raw["model_name"] == '"mambaout_test"' and raw["input_size"] == "[3, 48, 80]"
    runner = OnnxRunner(path)
    assert runner.metadata == meta
    assert [i.name for i in runner.session.get_inputs()] == ["image"]
    assert [o.name for o in runner.session.get_outputs()] == ["logits"]
    ts = export_model(model, "torchscript", tmp_path / "m.pt", img_size=(48, 80))
    assert read_torchscript_metadata(ts) == meta


def test_model_without_label_names_has_no_label_metadata(tmp_path):
    path = export_model(perturbed("mambaout_test"), "onnx", tmp_path / "m.onnx", img_size=32)
    meta = read_onnx_metadata(path)
    assert "label_names" not in meta and meta["input_size"] == [3, 32, 32]


def test_onnx_runner_accepts_numpy_and_rejects_a_wrong_size(tmp_path):
    model = perturbed("mambaout_test")
    path = export_model(model, "onnx", tmp_path / "m.onnx", img_size=32)
    runner = OnnxRunner(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float64)  # converted to float32
    out = runner(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 1000)
    with torch.no_grad():
        assert (out - model(torch.from_numpy(x).float())).abs().max() < TOL
    with pytest.raises(ValueError, match=r"expects input of shape N x 3 x 32 x 32, got 1 x 3 x 64 x 64"):
        runner(torch.zeros(1, 3, 64, 64))


def test_failed_export_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")

    def broken_export(model, args, f, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a model")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_model(perturbed("mambaout_test"), "onnx", out, img_size=32)
    assert out.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_unknown_format_and_missing_files_are_clear_errors(tmp_path):
    model = perturbed("mambaout_test")
    with pytest.raises(ValueError, match="unknown export format 'tflite'; choose one of: onnx, torchscript"):
        export_model(model, "tflite", tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()
    with pytest.raises(FileNotFoundError, match="exported model not found"):
        OnnxRunner(tmp_path / "nothing.onnx")
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not onnx at all")
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        read_onnx_metadata(bogus)


# ---------------------------------------------------------------------------------------------- the CLI
def parser():
    p = argparse.ArgumentParser(prog="mambaout export")
    add_export_args(p)
    return p


def parity_values(out: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^\s+(random, batch \d|real images \(\d\))\s+(\S+)$", out, re.MULTILINE)}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cmd_export_end_to_end_from_a_state_dict(fmt, tmp_path, capsys):
    ckpt = tmp_path / "weights.pth"
    torch.save(perturbed("mambaout_test").state_dict(), ckpt)
    out = tmp_path / "exported" / f"model.{fmt}"
    args = parser().parse_args(["--model", "mambaout_test", "--checkpoint", str(ckpt), "--format", fmt,
                                "--output", str(out), "--img-size", "64"])
    assert cmd_export(args) == 0
    printed = capsys.readouterr().out
    assert out.is_file()
    assert f"exported mambaout_test to {out}" in printed and "parity with PyTorch" in printed
    values = parity_values(printed)
    assert set(values) == {"random, batch 1", "random, batch 3", "real images (2)"}, printed
    assert all(v < TOL for v in values.values()), printed


def test_cmd_export_reads_the_model_name_from_a_training_checkpoint(tmp_path, capsys):
    model = perturbed("mambaout_test")
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "model_name": "mambaout_test",
                "pretrained_cfg": {"label_names": [f"class{i}" for i in range(1000)]}}, ckpt)
    out = tmp_path / "m.onnx"
    assert cmd_export(parser().parse_args(["--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out),
                                           "--img-size", "32"])) == 0
    assert "exported mambaout_test" in capsys.readouterr().out
    meta = read_onnx_metadata(out)
    assert meta["model_name"] == "mambaout_test" and meta["label_names"][:2] == ["class0", "class1"]


def test_cmd_export_errors(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(ValueError, match="checkpoint not found") as e:
        cmd_export(parser().parse_args(["--model", "mambaout_test", "--checkpoint", str(missing), "--format",
                                        "onnx", "--output", str(tmp_path / "m.onnx")]))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="model name .--model. is needed with the published weights"):
        cmd_export(parser().parse_args(["--pretrained", "--format", "onnx", "--output", str(tmp_path / "m.onnx")]))
    plain = tmp_path / "plain.pth"
    torch.save(perturbed("mambaout_test").state_dict(), plain)
    with pytest.raises(ValueError, match="does not record its model; pass the model name .--model NAME."):
        cmd_export(parser().parse_args(["--checkpoint", str(plain), "--format", "onnx", "--output",
                                        str(tmp_path / "m.onnx")]))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--model", "mambaout_test", "--pretrained", "--format", "tflite", "--output", "x"], "invalid choice: 'tflite'"),
    (["--model", "mambaout_test", "--format", "onnx", "--output", "x"], "one of the arguments"),
    (["--model", "mambaout_test", "--pretrained", "--checkpoint", "c.pth", "--format", "onnx", "--output", "x"],
     "not allowed with argument"),
    (["--model", "mambaout_huge", "--pretrained", "--format", "onnx", "--output", "x"], "unknown model"),
])
def test_bad_export_arguments_are_refused_by_the_parser(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err
