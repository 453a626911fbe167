"""``mambaout bench``: every documented field with sane values, train mode, the onnx backend, output formats."""
import argparse
import csv
import io
import json

import pytest
import torch

from mambaout import count_macs, count_params, create_model
from mambaout.cli.infer import add_bench_args, cmd_bench
from mambaout.infer.bench import FIELDS, _percentile, benchmark

SMALL = dict(batch_size=2, img_size=64, runs=2, warmup=1)


def check_result(r: dict, **expected):
    assert tuple(r) == FIELDS
    for key, value in expected.items():
        assert r[key] == value, (key, r[key], value)
    assert r["images_per_sec"] > 0
    assert 0 < r["latency_ms_min"] <= r["latency_ms_median"] <= r["latency_ms_p90"] <= r["latency_ms_max"]
    assert r["images_per_sec"] == pytest.approx(r["batch_size"] / r["latency_ms_median"] * 1e3, rel=1e-2)
    assert r["device"] in ("cpu", "cuda")
    if r["peak_memory_mb"] is not None:
        assert r["peak_memory_mb"] >= 0
        assert r["peak_memory_source"] in ("cuda_max_allocated", "vmhwm", "ru_maxrss")
    model = create_model(r["model"], device="meta")
    assert r["params"] == count_params(model)
    assert r["gmacs"] == pytest.approx(count_macs(model, (3, r["img_size"], r["img_size"])) / 1e9, abs=1e-3)


def test_benchmark_returns_every_documented_field():
    r = benchmark("mambaout_test", **SMALL, device="cpu")
    check_result(r, model="mambaout_test", backend="torch", device="cpu", batch_size=2, img_size=64, amp="none",
                 dtype="float32", mode="eval", channels_last=False, compile=False, threads=torch.get_num_threads())
    assert r["params"] == 447_560 and r["gmacs"] > 0
    assert set(FIELDS) <= set(r), set(FIELDS) - set(r)  # every field the table and CSV/JSON output carry


def test_benchmark_train_mode_with_options_and_threads_restored():
    before = torch.get_num_threads()
    r = benchmark("mambaout_test", **SMALL, train=True, channels_last=True, amp="bf16", threads=1, device="cpu")
    check_result(r, mode="train", channels_last=True, amp="bf16", threads=1)
    assert torch.get_num_threads() == before


def test_peak_memory_grows_with_the_batch():
    small = benchmark("mambaout_test", batch_size=1, img_size=64, runs=1, warmup=0, device="cpu")
    large = benchmark("mambaout_test", batch_size=16, img_size=192, runs=1, warmup=0, device="cpu")
    if small["peak_memory_source"] != "vmhwm":
        pytest.skip("peak memory is only a lower bound without Linux's resettable VmHWM")
    # 16 x 3 x 192 x 192 float32 input alone is 6.75 MiB; activations add many times that.
    assert large["peak_memory_mb"] > small["peak_memory_mb"] + 6


def test_onnx_backend():
    pytest.importorskip("onnxruntime")
    r = benchmark("mambaout_test", **SMALL, backend="onnx", device="cpu")
    check_result(r, backend="onnx", device="cpu", mode="eval", threads=None)


@pytest.mark.parametrize("options,needle", [
    (dict(amp="fp16", device="cpu"), "--amp fp16 needs a CUDA device"),
    (dict(backend="onnx", train=True), "--train applies to --backend torch only"),
    (dict(backend="onnx", amp="bf16"), "--amp applies to --backend torch only"),
    (dict(runs=0), "runs must be a positive whole number"),
    (dict(amp="fp8"), "amp must be one of none, bf16, fp16"),
])
def test_impossible_options_are_refused(options, needle):
    with pytest.raises(ValueError, match=needle):
        benchmark("mambaout_test", **{**SMALL, **options})


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'mambaout_huge'"):
        benchmark("mambaout_huge", **SMALL)


def test_percentile_interpolates():
    assert _percentile([1.0], 90) == 1.0
    assert _percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert _percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    assert _percentile(list(map(float, range(11))), 90) == pytest.approx(9.0)


# ---------------------------------------------------------------------------------------------- the CLI
def parse(*argv):
    p = argparse.ArgumentParser(prog="mambaout bench")
    add_bench_args(p)
    return p.parse_args([str(a) for a in argv])


SMALL_ARGS = ("--batch-size", 2, "--img-size", 64, "--runs", 2, "--warmup", 1, "--device", "cpu")


def test_cmd_bench_json_lines(capsys):
    assert cmd_bench(parse("--model", "mambaout_test,mambaout_test", *SMALL_ARGS, "--train", "--format", "json")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        row = json.loads(line)
        check_result(row, model="mambaout_test", mode="train", batch_size=2, img_size=64)


def test_cmd_bench_csv_and_table(capsys):
    assert cmd_bench(parse("--model", "mambaout_test", *SMALL_ARGS, "--format", "csv")) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and tuple(rows[0]) == FIELDS and float(rows[0]["images_per_sec"]) > 0
    assert cmd_bench(parse("--model", "mambaout_test", *SMALL_ARGS)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["model", "backend", "device"] and "img/s" in out[0]
    assert out[2].startswith("mambaout_test  torch") and "0.45M" in out[2]


def test_cmd_bench_refuses_fp16_on_cpu_before_running(capsys):
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        cmd_bench(parse("--model", "mambaout_test", *SMALL_ARGS, "--amp", "fp16"))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("argv,needle", [
    (["--model", "mambaout_test,mambaout_huge"], "unknown model 'mambaout_huge'"),
    (["--model", "mambaout_test", "--runs", "0"], "expected a positive whole number"),
    (["--model", "mambaout_test", "--warmup", "-1"], "expected a whole number >= 0"),
    (["--model", "mambaout_test", "--amp", "fp8"], "invalid choice"),
    (["--model", "mambaout_test", "--backend", "tensorrt"], "invalid choice"),
    (["--batch-size", "2"], "required"),
])
def test_bad_bench_arguments_are_refused_by_the_parser(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err
