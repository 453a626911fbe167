"""Deployment runtimes: OpenVINO IR export and its parity with PyTorch, INT8 post-training quantization for
OpenVINO (NNCF) and ONNX Runtime (static QDQ) calibrated on the user's images (one of them corrupt), and
``--backend openvino`` in predict, eval and bench."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli_in_process
from PIL import Image
from test_train import _quickstart_steps

from mambaout import create_model
from mambaout.infer.deploy import (
    OpenVINORunner,
    agreement,
    calibration_images,
    read_openvino_metadata,
)
from mambaout.infer.export import export_model, load_exported, parity_check

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("onnxruntime")

SIZE = 64
# float32 IR against PyTorch: the same tolerance as the ONNX export's (reassociated sums, fused kernels).
TOL = 1e-4


def _model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = create_model("mambaout_test", num_classes=10, **kw).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": [str(i) for i in range(10)],
                            "input_size": (3, SIZE, SIZE)}
    with torch.no_grad():  # norms and biases away from their init, so parity is not trivially met
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith(("weight", "gamma")) else 0.0))
    return model


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    model = _model()
    return model, export_model(model, "openvino", tmp_path_factory.mktemp("ir") / "m.xml", img_size=SIZE)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    """Twelve smooth colour images and one corrupt file."""
    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(12):
        base = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(base).resize((48, 48), Image.BILINEAR).save(root / f"img_{i:02d}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_openvino_ir_matches_pytorch_and_keeps_the_metadata(ir):
    model, path = ir
    assert path.is_file() and path.with_suffix(".bin").stat().st_size > 100_000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"
    meta = read_openvino_metadata(path)
    assert meta["model_name"] == "mambaout_test" and meta["input_size"] == [3, SIZE, SIZE]
    assert meta["label_names"] == [str(i) for i in range(10)] and meta["num_classes"] == 10
    assert meta["mean"] == pytest.approx(list(model.pretrained_cfg["mean"]))
    runner = load_exported(path, "openvino")
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 3, 5):  # each batch size gets its own static-shape compiled model
        x = torch.randn(batch, 3, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            assert (runner(x) - model(x)).abs().max() < TOL
    assert sorted(runner._compiled) == [1, 3, 5]
    diffs = parity_check(model, path, "openvino")
    assert diffs["random_b1"] < TOL and diffs["random_b3"] < TOL
    with pytest.raises(ValueError, match="expects input of shape N x 3 x 64 x 64"):
        runner(torch.randn(1, 3, 32, 32))


def test_parity_catches_a_different_model(ir):
    _, path = ir
    assert parity_check(_model(seed=1), path, "openvino")["random_b1"] > 1e-2


def test_dynamic_runner_gives_the_same_logits(ir):
    model, path = ir
    x = torch.randn(2, 3, SIZE, SIZE)
    static, dynamic = OpenVINORunner(path), OpenVINORunner(path, static=False)
    torch.testing.assert_close(static(x), dynamic(x), rtol=1e-4, atol=1e-5)


def test_a_missing_weights_file_or_a_bad_name_is_one_clear_error(ir, tmp_path):
    _, path = ir
    lone = tmp_path / "lone.xml"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"lone\.bin are missing"):
        OpenVINORunner(lone)
    with pytest.raises(ValueError, match=r"named \*\.xml"):
        export_model(_model(), "openvino", tmp_path / "model.ir", img_size=SIZE)
    assert not list(tmp_path.glob(".model*"))


def test_calibration_uses_the_models_preprocessing_and_skips_the_corrupt_file(calib_dir):
    model = _model()
    from mambaout.data.transforms import resolve_data_config

    with pytest.warns(UserWarning, match="broken.jpg"):
        images, skipped = calibration_images(calib_dir, resolve_data_config(model, args={"input_size": (3, 40, 40)}))
    assert len(images) == 12 and skipped == [str(calib_dir / "broken.jpg")]
    assert images[0].shape == (3, 40, 40)
    with pytest.warns(UserWarning):
        spread, _ = calibration_images(calib_dir, resolve_data_config(model), size=4)
    assert len(spread) <= 4
    with pytest.raises(FileNotFoundError, match="no such folder"):
        calibration_images(calib_dir / "nope", resolve_data_config(model))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_int8_export_is_quantized_close_and_says_so(fmt, calib_dir, tmp_path, capsys):
    model = _model()
    ckpt = tmp_path / "m.safetensors"
    export_model(model, "safetensors", ckpt)
    out = tmp_path / ("q.xml" if fmt == "openvino" else "q.onnx")
    keep = "GroupConvolution" if fmt == "openvino" else "depthwise Conv"
    code, stdout, stderr = cli_in_process(["export", "--checkpoint", ckpt, "--format", fmt, "--int8", "--calib-dir",
                                           calib_dir, "--img-size", SIZE, "--keep-float", keep, "--output", out],
                                          capsys)
    assert code == 0, stderr
    assert "calibrating on 12 image(s)" in stdout and "1 unreadable file(s) skipped" in stdout
    assert f"({fmt} int8," in stdout and "top-1 agreement" in stdout and f"kept in floating point: {keep}" in stdout
    meta = read_openvino_metadata(out) if fmt == "openvino" else load_exported(out, "onnx").metadata
    assert meta["precision"] == "int8" and meta["calibration_images"] == 12 and meta["label_names"][0] == "0"
    assert meta["int8_float_layers"] == [keep]
    runner = load_exported(out, fmt)
    if fmt == "openvino":
        ops = {op.get_type_name() for op in runner.model.get_ops()}
        assert "FakeQuantize" in ops
    else:
        import onnx

        graph = onnx.load(str(out)).graph
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
        # the depthwise convolutions kept in float: their weights are not fed through a DequantizeLinear
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        depthwise = [n for n in graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1
                                                                           for a in n.attribute)]
        assert depthwise and not any(n.input[1] in dequantized for n in depthwise)
    # INT8 tolerance: a random-weight model has no margin between its logits, so only closeness is asked here
    # (5% of the logit range, several quantization steps of the output layer); accuracy is measured on a trained
    # model below.
    x = list(torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)))
    assert agreement(model, runner, x)["max_rel_diff"] < 0.05
    assert parity_check(_model(seed=1), out, fmt)["random_b1"] > agreement(model, runner, x)["max_abs_diff"]


def test_int8_refusals_are_one_line(calib_dir, tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    export_model(_model(), "safetensors", ckpt)
    out = tmp_path / "out"
    for argv, needle in (
        (["--format", "torchscript", "--int8", "--calib-dir", calib_dir, "--output", out / "m.pt"],
         "--int8 works with --format onnx or openvino"),
        (["--format", "onnx", "--int8", "--output", out / "m.onnx"], "--int8 needs --calib-dir"),
        (["--format", "onnx", "--calib-dir", calib_dir, "--output", out / "m.onnx"], "only with --int8"),
        (["--format", "openvino", "--output", out / "m.bin"], "named *.xml"),
        (["--int8", "--calib-dir", tmp_path / "none", "--output", out / "m.onnx"], "no such folder"),
        (["--int8", "--calib-dir", calib_dir, "--keep-float", "Nope", "--output", out / "m.xml"],
         "--keep-float Nope: no such OpenVINO layer type"),
        (["--keep-float", "MatMul", "--output", out / "m.onnx"], "--keep-float is used only with --int8"),
    ):
        code, _, stderr = cli_in_process(["export", "--checkpoint", ckpt, *argv], capsys)
        assert code != 0 and needle in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists() or not list(out.iterdir())


def test_predict_eval_and_bench_take_backend_openvino(ir, small_digits, tmp_path, capsys):
    model, path = ir
    images = sorted((small_digits / "val").rglob("*.png"))[:3]
    code, stdout, stderr = cli_in_process(["predict", *images, "--checkpoint", path, "--json", "--topk", "2"], capsys)
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert len(rows) == 3 and rows[0]["topk"][0]["label"].isdigit()
    # the same file through the Python API and the torch model agree on the top class
    from mambaout.infer.predict import Predictor

    ov, torch_pred = Predictor(checkpoint=path), Predictor(model=model)
    assert ov.backend == "openvino"
    pil = [Image.open(p) for p in images]
    torch.testing.assert_close(ov.logits(pil), torch_pred.logits(pil), rtol=1e-4, atol=1e-4)

    code, stdout, stderr = cli_in_process(["eval", "--checkpoint", path, "--data-dir", small_digits / "val",
                                           "--output", tmp_path / "e.json"], capsys)
    assert code == 0, stderr
    assert json.loads((tmp_path / "e.json").read_text())["images"] == 40

    code, stdout, stderr = cli_in_process(["bench", "--checkpoint", path, "--batch-size", "2", "--img-size", SIZE,
                                           "--runs", "2", "--warmup", "1", "--format", "json"], capsys)
    assert code == 0, stderr
    row = json.loads(stdout.splitlines()[-1])
    assert row["backend"] == "openvino" and row["model"] == "mambaout_test" and row["images_per_sec"] > 0


def test_a_torch_checkpoint_is_exported_on_the_fly(small_digits, tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    export_model(_model(), "safetensors", ckpt)
    images = sorted((small_digits / "val").rglob("*.png"))[:2]
    torch_run = cli_in_process(["predict", *images, "--checkpoint", ckpt, "--json"], capsys)
    ov_run = cli_in_process(["predict", *images, "--checkpoint", ckpt, "--json", "--backend", "openvino"], capsys)
    assert torch_run[0] == ov_run[0] == 0, ov_run[2]
    for a, b in zip(torch_run[1].splitlines(), ov_run[1].splitlines()):
        ta, tb = json.loads(a)["topk"], json.loads(b)["topk"]
        assert [t["index"] for t in ta] == [t["index"] for t in tb]
        assert ta[0]["prob"] == pytest.approx(tb[0]["prob"], abs=1e-4)
    code, _, stderr = cli_in_process(["bench", "--model", "mambaout_test", "--backend", "openvino", "--int8",
                                      "--batch-size", "2", "--img-size", "32", "--runs", "1", "--warmup", "0",
                                      "--format", "json"], capsys)
    assert code == 0, stderr
    code, _, stderr = cli_in_process(["predict", *images, "--checkpoint", ckpt, "--int8"], capsys)
    assert code != 0 and "--int8 needs --calib-dir" in stderr


@pytest.mark.slow
@pytest.mark.learning_run("quickstart", _quickstart_steps)
def test_int8_on_the_trained_digits_model_keeps_its_accuracy(learning_runs, capsys):
    """The issue's goal on real images: top-1 agreement with float32 >= 99% and a top-1 drop <= 0.5 points on the
    quickstart model's 360 validation images, calibrated on its training images."""
    root, (_, train_run, _) = learning_runs.result("quickstart")
    assert train_run.returncode == 0, train_run.stderr[-2000:]
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "accuracy.py"
    r = subprocess.run([sys.executable, str(script), "--checkpoint", str(root / "run" / "best.pt"), "--images",
                        str(root / "digits" / "val"), "--calib-dir", str(root / "digits" / "train"),
                        "--paths", "OpenVINO int8,ONNX Runtime int8,OpenVINO fp32", "--json"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["n_images"] == 360 and not result["skipped"]
    for row in result["paths"]:
        assert row["top1_agreement"] >= 0.99, row
        assert result["top1_fp32"] - row["top1"] <= 0.005, row
    fp32 = next(x for x in result["paths"] if x["path"] == "OpenVINO fp32")
    assert fp32["max_abs_logit_diff"] < 1e-3
