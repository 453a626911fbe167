"""What the README promises, each through the interface it names: stopping dense training with a signal (and a
second signal), mid-epoch resume for detection, exact resume with every augmentation switched on, unreadable
images counted or refused, non-finite dense losses, the success paths of the smaller commands, unreadable files in
segment predict, folders in predict, sharded evaluation over an odd image count, and the demo with several
models, ONNX Runtime and a concurrency limit."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import free_port, max_diff, on_loss_call, run_forked, start_demo, stop_process, wait_for
from PIL import Image

from mambaout import create_model
from mambaout.classify.config import resolve_config
from mambaout.models import read_checkpoint

CLI = [sys.executable, "-m", "mambaout"]

pytest.importorskip("pycocotools")


def run_cli(*args, timeout=900, **kw):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def metrics_rows(out) -> list[dict]:
    """metrics.jsonl without the wall-clock columns, which no two runs share."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "per_sec" not in k and "time" not in k} for r in rows]


def assert_rows_equal(a: list[dict], b: list[dict]) -> None:
    assert [r.keys() for r in a] == [r.keys() for r in b]
    for x, y in zip(a, b):
        for k in x:
            if isinstance(x[k], float):
                assert x[k] == pytest.approx(y[k], abs=1e-6, nan_ok=True), k
            else:
                assert x[k] == y[k], k


# ----------------------------------------------------------------------------------------------- dense data
@pytest.fixture(scope="module")
def dense_data(tmp_path_factory):
    from mambaout.dense.shapes import make_shapes

    root = tmp_path_factory.mktemp("dense")
    return {"coco": make_shapes(root / "coco", "coco", n_train=12, n_val=2, size=(64, 64)),
            "ade": make_shapes(root / "ade", "ade20k", n_train=8, n_val=2, size=(64, 64))}


# Small enough for a few seconds per run, with drop path and flips on so that resuming must restore the RNGs.
DETECT_RECIPE = """model: mambaout_test
epochs: 2
batch_size: 2
global_batch_size: 2
lr: 0.001
warmup_iters: 2
drop_path: 0.1
min_size: 64
max_size: 64
anchor_sizes: [8, 16, 32, 64, 128]
rpn_train_proposals: [100, 50]
rpn_test_proposals: [50, 25]
roi_samples: 32
max_detections: 10
channels: 16
box_fc: 64
workers: 0
log_interval: 1
"""
SEGMENT_RECIPE = """model: mambaout_test
iters: 8
eval_interval: 4
batch_size: 2
global_batch_size: 2
lr: 0.002
warmup_iters: 2
drop_path: 0.1
crop_size: 64
scale: [64, 64]
eval_mode: whole
eval_stride: 43
channels: 16
aux_channels: 8
workers: 0
log_interval: 1
"""


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    (root / "detect.yaml").write_text(DETECT_RECIPE)
    (root / "segment.yaml").write_text(SEGMENT_RECIPE)
    return {"detect": root / "detect.yaml", "segment": root / "segment.yaml"}


def dense_cmd(task, recipes, dense_data, out, *extra):
    data = dense_data["coco" if task == "detect" else "ade"]
    return [*CLI, task, "train", "--recipe", str(recipes[task]), "--data-dir", str(data), "--output", str(out),
            *map(str, extra)]


# ---------------------------------------------------------------------------------- signals in dense training
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("task,sig,wait,per_chunk", [
    ("detect", signal.SIGINT, "iter 1-6/12 step 2/6", 6),  # Ctrl-C in the first epoch: a mid-epoch resume
    ("segment", signal.SIGTERM, "iter 1-4/8 step 1/4", 4),  # a scheduler's pre-emption
], ids=["detect-ctrl-c", "segment-sigterm"])
def test_dense_stop_on_a_signal_then_resume_matches_an_uninterrupted_run(task, sig, wait, per_chunk, recipes,
                                                                         dense_data, tmp_path):
    straight = subprocess.run(dense_cmd(task, recipes, dense_data, tmp_path / "straight"), capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "split"
    proc = subprocess.Popen(dense_cmd(task, recipes, dense_data, out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(proc, wait)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name} at iteration" in lines[0], err
    assert f"--resume {out / 'last.pt'}" in lines[0]
    ckpt = read_checkpoint(out / "last.pt")
    stopped_at = ckpt["iter"]
    assert 0 < stopped_at % per_chunk, "stopped inside the first chunk, not at an evaluation"
    assert ckpt["scores"] is None and len(ckpt["rng"]) == 1 and len(ckpt["partial"]) == 1

    resumed = subprocess.run([*dense_cmd(task, recipes, dense_data, out), "--resume", str(out / "last.pt")],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at iteration {stopped_at}" in resumed.stdout
    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(out / "last.pt")
    assert a["iter"] == b["iter"] == 2 * per_chunk and "partial" not in b
    assert max_diff(a["model"], b["model"]) <= 1e-6
    assert_rows_equal(metrics_rows(tmp_path / "straight"), metrics_rows(out))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_signal_stops_at_once(recipes, dense_data, tmp_path):
    out = tmp_path / "run"
    # Full-size quickstart steps (128-pixel crops, 64-channel head) so that both signals land inside one step.
    proc = subprocess.Popen([*CLI, "segment", "train", "--recipe", "segment_quickstart", "--data-dir",
                             str(dense_data["ade"]), "--output", str(out), "--batch-size", "2",
                             "--global-batch-size", "2", "--log-interval", "1", "--iters", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(proc, "step 1/")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "stopped by" not in err, err[-2000:]
    # It did not wait for the step to end and write a resumable checkpoint, and left no torn file behind.
    assert not (out / "last.pt").exists()
    assert not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------------------- exact resume
def _signal_on_call(monkeypatch, n: int, sig=signal.SIGTERM):
    """Send ``sig`` to this process from inside the n-th loss computation, as a scheduler would mid-step."""
    def action(call, loss):
        if call == n:
            os.kill(os.getpid(), sig)
        return loss

    on_loss_call(monkeypatch, action)


def test_resume_is_exact_with_every_augmentation_ema_amp_and_accumulation(small_digits, tmp_path, monkeypatch):
    from mambaout.classify.train import train
    from mambaout.engine.signals import RunInterrupted

    every = dict(model="mambaout_test", data_dir=str(small_digits), epochs=2, warmup_epochs=1, img_size=32,
                 batch_size=8, global_batch_size=16, workers=0, log_interval=1000, lr=2e-3, drop_path=0.1,
                 auto_augment="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0, reprob=0.25, color_jitter=0.4,
                 hflip=0.5, scale=(0.5, 1.0), ema=True, ema_decay=0.9, amp="bf16")
    cfg = resolve_config({**every, "output": str(tmp_path / "straight")}, recipe="quickstart")
    assert cfg.mixup > 0 and cfg.cutmix > 0 and cfg.reprob > 0 and cfg.auto_augment and cfg.ema
    train(cfg)
    split = tmp_path / "split"
    with monkeypatch.context() as m:
        _signal_on_call(m, 9)  # two micro-batches a step: inside step 5 of 10
        with pytest.raises(RunInterrupted, match="stopped by SIGTERM at epoch 1, step 5/10"):
            train(resolve_config({**every, "output": str(split)}, recipe="quickstart"))
    mid = read_checkpoint(split / "last.pt")
    assert mid["epoch"] == 0 and mid["batch"] == 5, "stopped inside the first epoch"
    train(resolve_config({**every, "output": str(split), "resume": str(split / "last.pt")}, recipe="quickstart"))
    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(split / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    assert max_diff(a["model"], b["model"]) <= 1e-6
    assert max_diff(a["ema"], b["ema"]) <= 1e-6 and max_diff(a["model"], a["ema"]) > 1e-3
    assert_rows_equal(metrics_rows(tmp_path / "straight"), metrics_rows(split))


# -------------------------------------------------------------------------------- unreadable training images
def _with_a_broken_image(src, dest):
    shutil.copytree(src, dest)
    bad = dest / "train" / "3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing a decoder can use
    return bad


def test_skipped_images_are_counted_in_the_log_and_metrics_and_strict_data_refuses(small_digits, tmp_path):
    data = tmp_path / "data"
    bad = _with_a_broken_image(small_digits, data)
    base = ["train", "--recipe", "quickstart", "--model", "mambaout_test", "--data-dir", data, "--epochs", "1",
            "--warmup-epochs", "0", "--workers", "0", "--batch-size", "16", "--mixup", "0.8", "--cutmix", "1.0"]
    r = run_cli(*base, "--output", tmp_path / "lenient")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 unreadable image(s) skipped" in r.stdout
    assert str(bad) in r.stderr  # the warning names the file
    with open(tmp_path / "lenient" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and int(rows[0]["skipped_images"]) == 1

    r = run_cli(*base, "--output", tmp_path / "strict", "--strict-data")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and str(bad) in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "strict" / "last.pt").exists()


def test_dense_skipped_images_and_strict_data(recipes, dense_data, tmp_path):
    data = tmp_path / "ade"
    shutil.copytree(dense_data["ade"], data)
    bad = sorted((data / "images" / "training").iterdir())[0]
    bad.write_bytes(b"not a jpeg at all")
    cmd = [*CLI, "segment", "train", "--recipe", str(recipes["segment"]), "--data-dir", str(data), "--iters", "4"]
    r = subprocess.run([*cmd, "--output", str(tmp_path / "lenient")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "unreadable image(s) skipped" in r.stdout and str(bad) in r.stderr
    with open(tmp_path / "lenient" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and int(rows[0]["skipped_images"]) >= 1
    r = subprocess.run([*cmd, "--output", str(tmp_path / "strict"), "--strict-data"], capture_output=True,
                       text=True, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and str(bad) in lines[0], r.stderr[-2000:]


# ------------------------------------------------------------------------------------ non-finite dense loss
def _nan_loss_on(monkeypatch, bad_calls: set[int]):
    import mambaout.dense.tasks as tasks

    real = tasks.make_task
    calls = {"n": 0}

    def make(cfg):
        task = real(cfg)
        loss = task.loss

        def poisoned(model, images, targets):
            calls["n"] += 1
            total, parts = loss(model, images, targets)
            return (total * float("nan") if calls["n"] in bad_calls else total), parts

        task.loss = poisoned
        return task

    monkeypatch.setattr(tasks, "make_task", make)


def _seg_cfg(data, out, **kw):
    import yaml

    from mambaout.dense.config import SegmentConfig

    values = {**yaml.safe_load(SEGMENT_RECIPE), "data_dir": str(data), "output": str(out), **kw}
    return resolve_config(values, cls=SegmentConfig)


def test_dense_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(dense_data, tmp_path, monkeypatch):
    from mambaout.classify.train import NonFiniteLoss
    from mambaout.dense.train import train_dense

    _nan_loss_on(monkeypatch, {6})  # the second iteration after the first evaluation
    with pytest.raises(NonFiniteLoss, match="loss is not finite at iteration 5") as e:
        train_dense(_seg_cfg(dense_data["ade"], tmp_path))
    assert str(tmp_path / "last.pt") in str(e.value)
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["iter"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_dense_nonfinite_loss_skip_counts_and_continues(dense_data, tmp_path, monkeypatch):
    from mambaout.dense.train import train_dense

    _nan_loss_on(monkeypatch, {2, 7})
    summary = train_dense(_seg_cfg(dense_data["ade"], tmp_path, nonfinite="skip"))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_steps") for r in rows] == [1, 1] and summary["iteration"] == 8
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# --------------------------------------------------------------------------------- smaller commands: success
def test_prepare_shapes_writes_both_layouts(tmp_path, capsys):
    from mambaout.cli import main

    assert main(["prepare-shapes", str(tmp_path / "coco"), "--layout", "coco", "--train", "3", "--val", "2",
                 "--size", "48"]) == 0
    assert "wrote 3 train and 2 val images" in capsys.readouterr().out
    for split, n in (("train2017", 3), ("val2017", 2)):
        ann = json.loads((tmp_path / "coco" / "annotations" / f"instances_{split}.json").read_text())
        assert len(ann["images"]) == n and ann["annotations"] and {c["name"] for c in ann["categories"]} == {
            "circle", "square", "triangle"}
        for im in ann["images"]:
            with Image.open(tmp_path / "coco" / split / im["file_name"]) as f:
                assert f.size == (48, 48)
    assert main(["prepare-shapes", str(tmp_path / "ade"), "--layout", "ade20k", "--train", "3", "--val", "2"]) == 0
    for split, n in (("training", 3), ("validation", 2)):
        images = sorted((tmp_path / "ade" / "images" / split).glob("*.jpg"))
        labels = sorted((tmp_path / "ade" / "annotations" / split).glob("*.png"))
        assert len(images) == len(labels) == n
        assert {x.stem for x in images} == {x.stem for x in labels}
        values = set(np.unique(np.asarray(Image.open(labels[0]))).tolist())
        assert values <= {0, 1, 2, 3, 4} and len(values) >= 2


@pytest.mark.slow
def test_compare_on_the_default_digits(tmp_path):
    out = tmp_path / "cmp"
    r = run_cli("compare", "--models", "mambaout_test", "--epochs", "1", "--output", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((out / "data" / "train").glob("*/*.png"))) == 1437  # scikit-learn's digits, exported
    rows = json.loads((out / "compare.json").read_text())
    assert [row["model"] for row in rows] == ["mambaout_test"]
    assert 50 < rows[0]["top1"] <= 100 and rows[0]["epochs"] == 1  # 83% here after one epoch; chance is 10%
    assert (out / "compare.png").stat().st_size > 10_000 and "mambaout_test" in (out / "compare.md").read_text()


@pytest.mark.slow
def test_info_dense_gives_the_paper_numbers(capsys):
    from mambaout.cli import main

    assert main(["info", "mambaout_tiny", "--dense"]) == 0
    out = capsys.readouterr().out
    # The paper's Table 3/4 rows for MambaOut-Tiny: Mask R-CNN 43M params, 262 GFLOPs; UperNet 54M, 938 GFLOPs.
    assert "Mask R-CNN" in out and "UperNet" in out
    for value in ("43", "262", "54", "938"):
        assert value in out, value


def test_list_as_csv(capsys):
    from mambaout.cli import main

    assert main(["list", "--format", "csv", "mambaout_t*"]) == 0
    rows = {r["model"]: r for r in csv.DictReader(capsys.readouterr().out.splitlines())}
    assert set(rows) == {"mambaout_tiny", "mambaout_test", "mambaout_test_ssm", "mambaout_test_ssm_bi",
                         "mambaout_test_ssm_cross", "mambaout_test_attn", "mambaout_test_causal_attn"}
    tiny = rows["mambaout_tiny"]
    assert int(tiny["params"]) == 26_545_096 and float(tiny["gmacs"]) == 4.49 and float(tiny["top1_paper"]) == 82.7
    assert tiny["weights"] == "official release" and rows["mambaout_test"]["top1_paper"] == ""


def test_env_as_text(capsys):
    from mambaout.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    versions = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert versions["torch"].strip() == torch.__version__.split("+")[0]
    assert versions["python"].strip() == sys.version.split()[0]
    assert int(versions["cpu_count"]) == os.cpu_count() and versions["timm"].strip()


# ------------------------------------------------------------------------------------ predict on files
@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    model = create_model("mambaout_test", num_classes=3)
    ckpt = root / "c.pt"
    torch.save({"model": model.state_dict(), "model_name": "mambaout_test", "class_names": ["a", "b", "c"],
                "pretrained_cfg": {**model.pretrained_cfg, "input_size": [3, 32, 32], "label_names": ["a", "b", "c"]}},
               ckpt)
    return ckpt


def test_predict_searches_folders_recursively(classifier, tmp_path):
    from skimage import data

    tree = tmp_path / "photos"
    wanted = [tree / "top.png", tree / "a" / "cat.jpg", tree / "a" / "b" / "c" / "rocket.PNG"]
    for path, image in zip(wanted, (data.astronaut(), data.chelsea(), data.rocket())):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((40, 40)).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    (tree / "a" / "notes.txt").write_text("not an image, and not an image extension")
    r = run_cli("predict", tree, "--checkpoint", classifier, "--json", "--topk", "1")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted(row["path"] for row in rows) == sorted(map(str, wanted))
    assert all(row["topk"][0]["label"] in {"a", "b", "c"} for row in rows)


@pytest.fixture(scope="module")
def segmenter(dense_data, tmp_path_factory):
    from mambaout.dense.train import train_dense

    out = tmp_path_factory.mktemp("segmenter")
    train_dense(_seg_cfg(dense_data["ade"], out, iters=2, eval_interval=2))
    return out / "last.pt"


def test_segment_predict_reports_an_unreadable_file_and_draws_the_rest(segmenter, dense_data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((dense_data["ade"] / "images" / "validation").glob("*.jpg"))
    for p in good:
        shutil.copy(p, folder / p.name)
    (folder / "zzz_broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 20)  # a JPEG marker, then nothing
    r = run_cli("segment", "predict", folder, "--checkpoint", segmenter, "--output", tmp_path / "drawn")
    assert r.returncode == 1, r.stderr
    assert "1 of 3 file(s) failed" in r.stderr
    rows = [json.loads(x) for x in (tmp_path / "drawn" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and "error" in rows[2] and "zzz_broken.jpg" in rows[2]["error"]
    assert all(row["class_share"] and abs(sum(row["class_share"].values()) - 1) < 0.01 for row in rows[:2])
    assert sorted(p.name for p in (tmp_path / "drawn").glob("*.png")) == sorted(f"{p.stem}.png" for p in good)


# ------------------------------------------------------------------------------------ sharded evaluation
def _eval_rank(rank, checkpoint, folder, store, out):
    import torch.distributed as dist

    from mambaout.infer.evaluate import evaluate_model
    from mambaout.models import create_model as make

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = make("mambaout_test", checkpoint_path=str(checkpoint), num_classes=3).eval()
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "label_names": ["a", "b", "c"]}
        res = evaluate_model(model, folder, batch_size=2, workers=0, device="cpu")
        (out / f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def test_sharded_evaluation_with_an_odd_image_count_matches_one_process(classifier, tmp_path):
    from mambaout.infer.evaluate import evaluate_model

    folder = tmp_path / "val"
    rng = np.random.default_rng(0)
    for i in range(7):  # 7 images over 2 processes: 4 + 3
        (folder / "abc"[i % 3]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "abc"[i % 3] / f"{i}.png")
    model = create_model("mambaout_test", checkpoint_path=str(classifier), num_classes=3).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "label_names": ["a", "b", "c"]}
    single = evaluate_model(model, folder, batch_size=2, workers=0, device="cpu")
    assert single["images"] == 7 and 0 < single["top1"] < 100, single  # a score the sharding could change
    run_forked(_eval_rank, (classifier, folder, tmp_path / "store", tmp_path))
    for rank in range(2):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["images"] == 7 and res["skipped"] == 0
        for key in ("top1", "top5", "loss"):
            assert res[key] == pytest.approx(single[key], abs=1e-5), key


# ---------------------------------------------------------------------------------------------- demo
@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-models")
    paths = {}
    for name, labels, seed in (("animals", ["cat", "dog", "owl"], 1), ("things", ["cup", "rocket"], 2)):
        torch.manual_seed(seed)
        model = create_model("mambaout_test", num_classes=len(labels))
        with torch.no_grad():
            model.head.fc.weight.normal_(0, 1.0)  # peaked: no near-ties between the top classes
        paths[name] = root / f"{name}.pt"
        torch.save({"model": model.state_dict(), "model_name": "mambaout_test", "class_names": labels,
                    "pretrained_cfg": {**model.pretrained_cfg, "input_size": [3, 64, 64], "label_names": labels}},
                   paths[name])
    image = root / "coffee.png"
    from skimage import data

    Image.fromarray(data.coffee()).save(image)
    return paths, image


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_serves_several_models_through_onnx_runtime(two_checkpoints, tmp_path):
    pytest.importorskip("onnxruntime")
    from gradio_client import Client, handle_file

    from mambaout.infer.predict import Predictor, load_image

    paths, image = two_checkpoints
    proc, port = start_demo(["--checkpoint", paths["animals"], "--checkpoint", paths["things"], "--backend", "onnx",
                             "--concurrency", "2"], tmp_path / "demo.log",
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for name in ("animals", "things"):
            expected = Predictor(checkpoint=paths[name]).predict([load_image(image)], topk=1)[0][0]["label"]
            label, timing = client.predict(handle_file(str(image)), f"{name}.pt (mambaout_test)",
                                           api_name="/classify")
            assert label["label"] == expected, (name, label)
            assert "on onnx" in timing, timing
        # /predict is the first model of the menu
        assert client.predict(handle_file(str(image)), api_name="/predict")["label"] in {"cat", "dog", "owl"}
        assert proc.poll() is None
    finally:
        stop_process(proc)


def test_demo_concurrency_reaches_the_queue(two_checkpoints, monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    import gradio as gr

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))

    from mambaout.cli import main

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append((self, kw)))
    paths, _ = two_checkpoints
    port = free_port()
    assert main(["demo", "--checkpoint", str(paths["animals"]), "--checkpoint", str(paths["things"]),
                 "--concurrency", "3", "--port", str(port)]) == 0
    (demo, kw), = launched
    assert demo._queue.default_concurrency_limit == 3 and kw["server_port"] == port
    assert kw["server_name"] == "127.0.0.1"

