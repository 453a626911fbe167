"""``--fast``: bfloat16 weights where the hardware has native bf16, float32 (with a warning) elsewhere."""
import copy
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import mambaout.models.fast as fast
from mambaout import create_model
from mambaout.cli import main
from mambaout.infer.bench import benchmark
from mambaout.infer.predict import Predictor

NATIVE = fast.native_bf16("cpu")


def small_model(num_classes=10):
    """``mambaout_test`` with seeded random weights, preprocessing at 64x64 to keep each forward cheap."""
    torch.manual_seed(0)
    model = create_model("mambaout_test", num_classes=num_classes)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64)}
    return model


def random_images(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def assert_same_top1_where_decided(a, b):
    """The bf16 logits ``b`` pick fp32's class for every image whose fp32 top-1 leads the runner-up by more than
    twice the largest logit error (closer calls may flip, and say nothing); at least half the images qualify, so
    the check is never empty."""
    err = (a - b).abs().max()
    top2 = a.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * err
    assert decided.sum() >= max(1, len(a) // 2), (top2, err)
    assert a.argmax(-1)[decided].tolist() == b.argmax(-1)[decided].tolist()


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(fast, "native_bf16", lambda device: False)


@pytest.fixture
def force_bf16(monkeypatch):
    monkeypatch.setattr(fast, "native_bf16", lambda device: True)


# ------------------------------------------------------------------------------------------- detection
def test_native_bf16_and_fast_dtype_agree():
    assert NATIVE == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert fast.fast_dtype("cpu") == (torch.bfloat16 if NATIVE else torch.float32)
    assert fast.fast_dtype(torch.device("cpu")) == fast.fast_dtype("cpu")
    if not torch.cuda.is_available():
        assert fast.native_bf16("cuda") is False
        assert fast.fast_dtype("cuda") == torch.float32


def test_a_failing_check_means_not_native(monkeypatch):
    def broken():
        raise RuntimeError("no such op")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", broken)
    assert fast.native_bf16("cpu") is False
    assert fast.fast_dtype("cpu") == torch.float32


def test_to_fast_converts_or_warns(no_bf16):
    model = torch.nn.Linear(4, 2).train()
    with pytest.warns(RuntimeWarning, match="keeps float32 on this CPU.*no native bfloat16"):
        out, dtype = fast.to_fast(model, "cpu")
    assert dtype == torch.float32 and out.weight.dtype == torch.float32 and not out.training


def test_to_fast_bf16_without_a_warning(force_bf16):
    model = torch.nn.Linear(4, 2).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, dtype = fast.to_fast(model, "cpu")
    assert dtype == torch.bfloat16 and out.weight.dtype == torch.bfloat16 and not out.training


# ------------------------------------------------------------------------------------------- Predictor
def test_fast_predictor_agrees_with_float32():
    model = small_model()
    ref = Predictor(model=copy.deepcopy(model))
    if NATIVE:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # native bf16: no fallback warning
            p = Predictor(model=copy.deepcopy(model), fast=True)
    else:
        with pytest.warns(RuntimeWarning, match="keeps float32"):
            p = Predictor(model=copy.deepcopy(model), fast=True)
    assert p.dtype == fast.fast_dtype("cpu") and ref.dtype == torch.float32
    assert next(p.model.parameters()).dtype == p.dtype
    imgs = random_images(4)
    a, b = ref.logits(imgs), p.logits(imgs)
    assert b.dtype == torch.float32 and b.device.type == "cpu" and b.shape == a.shape == (4, 10)
    err, scale = (a - b).abs().max(), a.abs().max()
    assert err <= 0.02 * scale, (err, scale)
    if p.dtype == torch.bfloat16:
        assert err > 0  # really bf16 arithmetic, not float32 under another name
    assert_same_top1_where_decided(a, b)
    assert [r[0]["index"] for r in p.predict(imgs)] == b.argmax(-1).tolist()


def test_forced_bf16_predictor_runs_bf16_weights(force_bf16):
    model = small_model()
    p = Predictor(model=copy.deepcopy(model), fast=True)
    assert p.dtype == torch.bfloat16 and next(p.model.parameters()).dtype == torch.bfloat16
    imgs = random_images(3, seed=1)
    a, b = Predictor(model=model).logits(imgs), p.logits(imgs)
    assert b.dtype == torch.float32
    assert 0 < (a - b).abs().max() <= 0.02 * a.abs().max()
    assert_same_top1_where_decided(a, b)


def test_fallback_predictor_is_float32_and_exact(no_bf16):
    model = small_model()
    with pytest.warns(RuntimeWarning, match="keeps float32 on this CPU"):
        p = Predictor(model=copy.deepcopy(model), fast=True)
    assert p.dtype == torch.float32 and next(p.model.parameters()).dtype == torch.float32
    imgs = random_images(2, seed=2)
    torch.testing.assert_close(p.logits(imgs), Predictor(model=model).logits(imgs))


@pytest.mark.parametrize("options,needle", [
    (dict(backend="onnx"), "--fast applies to --backend torch and openvino"),
    (dict(checkpoint="model.onnx"), "--fast applies to --backend torch and openvino"),
    (dict(amp="bf16"), "--fast and --amp bf16 are alternatives"),
])
def test_fast_conflicts_are_refused(options, needle):
    with pytest.raises(ValueError, match=needle):
        Predictor(model=small_model(), fast=True, **options)


# ------------------------------------------------------------------------------------------------ bench
SMALL = dict(img_size=32, batch_size=2, runs=1, warmup=0, device="cpu")


def test_bench_fast_reports_the_dtype_used():
    if NATIVE:
        r = benchmark("mambaout_test", fast=True, **SMALL)
    else:
        with pytest.warns(RuntimeWarning, match="keeps float32"):
            r = benchmark("mambaout_test", fast=True, **SMALL)
    assert r["dtype"] == ("bfloat16" if NATIVE else "float32")
    assert r["amp"] == "none" and r["mode"] == "eval" and r["images_per_sec"] > 0
    assert list(r).index("dtype") == list(r).index("amp") + 1
    assert benchmark("mambaout_test", **SMALL)["dtype"] == "float32"


def test_bench_fast_both_branches(monkeypatch):
    monkeypatch.setattr(fast, "native_bf16", lambda device: True)
    assert benchmark("mambaout_test", fast=True, **SMALL)["dtype"] == "bfloat16"
    monkeypatch.setattr(fast, "native_bf16", lambda device: False)
    with pytest.warns(RuntimeWarning, match="keeps float32"):
        assert benchmark("mambaout_test", fast=True, **SMALL)["dtype"] == "float32"


@pytest.mark.parametrize("options,needle", [
    (dict(backend="onnx"), "--fast applies to --backend torch and openvino"),
    (dict(amp="bf16"), "--fast and --amp bf16 are alternatives"),
    (dict(train=True), "--fast times inference only"),
])
def test_bench_fast_conflicts_are_refused(options, needle):
    with pytest.raises(ValueError, match=needle):
        benchmark("mambaout_test", fast=True, **{**SMALL, **options})


def test_bench_cli_fast_table_has_a_dtype_column(capsys, force_bf16):
    assert main(["bench", "--model", "mambaout_test", "--fast", "--img-size", "32", "--batch-size", "2",
                 "--runs", "1", "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0].split()
    assert "dtype" in header and header.index("dtype") == header.index("amp") + 1
    assert "bfloat16" in out[2].split()


# -------------------------------------------------------------------------------------------------- CLI
CLASSES = ["zero", "one", "two", "three"]


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "small.png"
    random_images(1, size=48, seed=3)[0].save(path)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    """A 4-class ``mambaout_test`` checkpoint in this project's format, preprocessing at 64x64."""
    model = small_model(num_classes=4)
    path = tmp_path / "small.pt"
    cfg = {**model.pretrained_cfg, "label_names": CLASSES}
    torch.save({"model": model.state_dict(), "model_name": "mambaout_test", "class_names": CLASSES,
                "pretrained_cfg": cfg}, path)
    return path


def run_predict_json(capsys, *argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float32 fallback warning on a CPU without bf16
        assert main(["predict", *map(str, argv), "--json", "--topk", "4"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cli_predict_fast_json(png, checkpoint, capsys):
    rows = run_predict_json(capsys, png, "--model", "mambaout_test", "--checkpoint", checkpoint, "--fast")
    ref = run_predict_json(capsys, png, "--model", "mambaout_test", "--checkpoint", checkpoint)
    assert len(rows) == 1 and rows[0]["path"] == str(png)
    top = rows[0]["topk"]
    assert len(top) == 4 and all(set(t) == {"label", "index", "prob"} for t in top)
    assert {t["label"] for t in top} == set(CLASSES) and sum(t["prob"] for t in top) == pytest.approx(1, abs=1e-4)
    assert top[0]["label"] == ref[0]["topk"][0]["label"]
    assert top[0]["prob"] == pytest.approx(ref[0]["topk"][0]["prob"], abs=0.05)


@pytest.mark.parametrize("extra,needle", [
    (["--backend", "onnx"], "--fast applies to --backend torch and openvino"),
    (["--amp", "bf16"], "--fast and --amp bf16 are alternatives"),
])
def test_cli_predict_fast_conflicts_exit_2(png, checkpoint, capsys, extra, needle):
    assert main(["predict", str(png), "--checkpoint", str(checkpoint), "--fast", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mambaout predict: error: ") and needle in lines[0]


@pytest.mark.parametrize("command", ["predict", "bench"])
def test_help_shows_fast(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--fast" in out and "bfloat16" in out
