"""The dense pipelines end to end: backbone adapter, schedules, engine (resume, torchrun), CLI, complexity, and
that both tasks actually learn the generated shapes."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("pycocotools")

from conftest import cli_in_process  # noqa: E402

from mambaout.classify.config import ConfigError, resolve_config  # noqa: E402
from mambaout.dense.config import DetectConfig, SegmentConfig  # noqa: E402
from mambaout.dense.shapes import make_shapes  # noqa: E402
from mambaout.dense.train import epoch_batches, lr_at, micro_batch_seed, train_dense  # noqa: E402
from mambaout.models import read_checkpoint  # noqa: E402

CLI = [sys.executable, "-m", "mambaout"]


def run_cli(*args, timeout=1800):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_ade(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("ade_small"), "ade20k", n_train=8, n_val=4, size=(64, 64))


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("coco_small"), "coco", n_train=8, n_val=4, size=(64, 64))


def seg_cfg(data, out, **kw):
    base = dict(data_dir=str(data), output=str(out), iters=6, eval_interval=3, crop_size=64, scale=(64, 64),
                eval_stride=43, batch_size=2, global_batch_size=2, warmup_iters=2, channels=16, aux_channels=8,
                log_interval=1000)
    return resolve_config({**base, **kw}, recipe="segment_quickstart", cls=SegmentConfig)


# ------------------------------------------------------------------------------------------------ backbone
def test_backbone_norms_freezing_and_weights(tmp_path):
    from safetensors.torch import save_file

    from mambaout.dense.backbone import MambaOutBackbone
    from mambaout.models import create_model

    torch.manual_seed(0)
    clf = create_model("mambaout_test", num_classes=7)
    save_file(clf.state_dict(), str(tmp_path / "w.safetensors"))
    b = MambaOutBackbone("mambaout_test", checkpoint_path=tmp_path / "w.safetensors", frozen_stages=1)
    for k, v in b.body.state_dict().items():
        assert torch.equal(v, clf.state_dict()[k]), k
    assert not any(k.startswith("head.fc") for k in b.body.state_dict())
    frozen = [n for n, p in b.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("body.stem", "body.stages.0", "body.stages.1")) for n in frozen)
    assert all(p.requires_grad for n, p in b.named_parameters() if n.startswith("body.stages.2"))
    b.train()
    assert not b.body.stages[1].training and b.body.stages[2].training
    outs = b(torch.randn(2, 3, 64, 96))
    assert [o.shape[1] for o in outs] == b.out_channels == [16, 32, 48, 64]
    assert [o.shape[-1] for o in outs] == [96 // s for s in b.strides]
    # Each stage output has its own LayerNorm: per-position channel statistics are normalised.
    with torch.no_grad():
        for norm in b.norms:
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        mean = b(torch.randn(1, 3, 64, 64))[0].mean(1)
    assert mean.abs().max() < 1e-4


def test_backbone_rejects_non_mambaout_and_bad_stages():
    from mambaout.dense.backbone import MambaOutBackbone

    with pytest.raises(ValueError, match="not a MambaOut model"):
        MambaOutBackbone("vit_tiny")
    with pytest.raises(ValueError, match="frozen_stages"):
        MambaOutBackbone("mambaout_test", frozen_stages=7)


# ----------------------------------------------------------------------------------------------- schedules
def test_detection_schedule_is_warmup_then_steps():
    cfg = resolve_config({"warmup_iters": 10}, cls=DetectConfig)
    ipe = 100
    assert lr_at(cfg, 0, 1200, ipe) == pytest.approx(1e-4 * 0.001)
    assert lr_at(cfg, 5, 1200, ipe) == pytest.approx(1e-4 * (1 - 0.5 * 0.999))
    assert lr_at(cfg, 10, 1200, ipe) == pytest.approx(1e-4)
    assert lr_at(cfg, 799, 1200, ipe) == pytest.approx(1e-4)
    assert lr_at(cfg, 800, 1200, ipe) == pytest.approx(1e-5)  # epoch 8 starts
    assert lr_at(cfg, 1100, 1200, ipe) == pytest.approx(1e-6)  # epoch 11 starts
    assert resolve_config({"epochs": 24}, cls=DetectConfig).steps() == (16, 22)


def test_segmentation_schedule_is_warmup_then_poly():
    cfg = resolve_config({"iters": 1000, "warmup_iters": 100, "min_lr": 0.0}, cls=SegmentConfig)
    assert lr_at(cfg, 0, 1000, 1) == pytest.approx(1e-4 * 1e-6)
    assert lr_at(cfg, 100, 1000, 1) == pytest.approx(1e-4 * 0.9)
    assert lr_at(cfg, 500, 1000, 1) == pytest.approx(1e-4 * 0.5)
    assert lr_at(cfg, 1000, 1000, 1) == pytest.approx(0.0)


def test_epoch_batches_partition_the_data_and_match_accumulation():
    ranks = [epoch_batches(103, seed=1, epoch=2, batch=3, rank=r, world=4) for r in range(4)]
    flat = [i for chunks in ranks for chunk in chunks for i in chunk]
    assert len(flat) == len(set(flat)) == 96 and all(len(c) == 3 for chunks in ranks for c in chunks)
    assert epoch_batches(103, 1, 2, 3, 0, 4) == ranks[0]
    assert epoch_batches(103, 1, 3, 3, 0, 4) != ranks[0]
    # 4 processes, or one process accumulating 4 micro-batches: the same micro-batches in each step
    single = epoch_batches(103, 1, 2, 3, rank=0, world=1, accum=4)
    assert [single[4 * i + r] for i in range(len(ranks[0])) for r in range(4)] == [
        ranks[r][i] for i in range(len(ranks[0])) for r in range(4)]
    seeds = {micro_batch_seed(5, it, m, 4, 0, 1) for it in range(3) for m in range(4)}
    assert seeds == {micro_batch_seed(5, it, 0, 1, r, 4) for it in range(3) for r in range(4)}


def test_bad_dense_settings_name_the_setting():
    with pytest.raises(ConfigError, match="'lr_steps'"):
        resolve_config({"epochs": 6, "lr_steps": [4, 9]}, cls=DetectConfig)
    with pytest.raises(ConfigError, match="'eval_mode'"):
        resolve_config({"eval_mode": "tiles"}, cls=SegmentConfig)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\): crop_size"):
        resolve_config({"crop_size": 64}, cls=DetectConfig)


# ------------------------------------------------------------------------------------------------ engine
def test_segment_resume_continues_to_the_same_weights(tiny_ade, tmp_path):
    train_dense(seg_cfg(tiny_ade, tmp_path / "straight"))
    train_dense(seg_cfg(tiny_ade, tmp_path / "split", stop_after=3))
    assert read_checkpoint(tmp_path / "split" / "last.pt")["iter"] == 3
    train_dense(seg_cfg(tiny_ade, tmp_path / "split", resume=str(tmp_path / "split" / "last.pt")))
    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(tmp_path / "split" / "last.pt")
    assert a["iter"] == b["iter"] == 6
    worst = max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in a["model"])
    assert worst <= 1e-6, worst
    rows = [json.loads(r) for r in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [3, 6] and all("mIoU" in r for r in rows)
    assert (tmp_path / "split" / "curves.png").is_file()


def test_dense_checkpoint_fine_tunes_with_new_classes(tiny_ade, tmp_path):
    from mambaout.dense.tasks import load_dense

    train_dense(seg_cfg(tiny_ade, tmp_path / "a", iters=3))
    with pytest.warns(UserWarning, match="tensors not loaded"):
        train_dense(seg_cfg(tiny_ade, tmp_path / "b", iters=3, num_classes=6,
                            checkpoint=str(tmp_path / "a" / "last.pt")))
    t = load_dense(tmp_path / "b" / "last.pt", "segment", overrides={"crop_size": None, "eval_mode": None})
    assert t.cfg.crop_size == 64, "an override left as None keeps the trained setting"
    assert t.num_classes == 6 and t.class_names[:4] == ["background", "circle", "square", "triangle"]
    with pytest.raises(ConfigError, match="segment checkpoint"):
        load_dense(tmp_path / "b" / "last.pt", "detect")


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_print_config_and_one_line_errors(tiny_coco, tmp_path, capsys):
    code, out, err = cli_in_process(["detect", "train", "--recipe", "detect_quickstart", "--epochs", "24",
                                     "--print-config"], capsys)
    assert code == 0, err
    assert "min_size: 128" in out and "epochs: 24" in out
    for args, needle in [
        (["detect", "train", "--recipe", "detect_quickstart", "--data-dir", tmp_path / "none"], "instances_"),
        (["segment", "train", "--data-dir", tiny_coco, "--amp", "fp32"], "setting 'amp' must be one of"),
        (["segment", "train", "--model", "mambaout_huge"], "unknown model 'mambaout_huge'"),
        (["detect", "eval", "--checkpoint", tmp_path / "missing.pt", "--data-dir", tiny_coco], "missing.pt"),
    ]:
        code, _, err = cli_in_process(args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], (args, err)


def test_segmenter_complexity_matches_the_paper():
    from mambaout.dense.complexity import dense_complexity

    d = dense_complexity("segment", "mambaout_tiny")
    assert round(d["params"] / 1e6) == d["params_paper_m"] == 54
    assert round(d["gmacs"]) == d["gmacs_paper"] == 938


@pytest.mark.slow
def test_detector_complexity_matches_the_paper():
    from mambaout.dense.complexity import dense_complexity

    d = dense_complexity("detect", "mambaout_tiny")
    assert round(d["params"] / 1e6) == d["params_paper_m"] == 43
    assert round(d["gmacs"]) == d["gmacs_paper"] == 262


# ------------------------------------------------------------------------------------ learning, end to end
def _write_corrupt(path):
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return path


def _detection_steps(root):
    data, out = root / "coco", root / "run"
    bad = _write_corrupt(root / "broken.jpg")
    return [["prepare-shapes", data, "--layout", "coco"],
            ["detect", "train", "--recipe", "detect_quickstart", "--data-dir", data, "--output", out],
            ["detect", "eval", "--checkpoint", out / "best.pt", "--data-dir", data, "--output", out / "eval.json"],
            ["detect", "predict", data / "val2017" / "000000.jpg", bad, "--checkpoint", out / "best.pt", "--output",
             root / "drawn"]]


@pytest.mark.slow
@pytest.mark.learning_run("detect", _detection_steps)
def test_detection_learns_the_shapes_through_the_cli(learning_runs):
    root, (prepare, train, evaluate, predict) = learning_runs.result("detect")
    out = root / "run"
    assert prepare.returncode == 0 and "wrote 200 train and 50 val images" in prepare.stdout, prepare.stderr
    assert train.returncode == 0, train.stderr[-3000:]
    for name in ("best.pt", "last.pt", "curves.png", "metrics.csv", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    scores = json.loads((out / "eval.json").read_text())
    assert set(scores) == {"bbox", "segm"} and set(scores["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert scores["bbox"]["AP50"] > 0.5 and scores["segm"]["AP50"] > 0.5, scores
    assert predict.returncode == 1 and "broken.jpg" in predict.stdout
    assert (root / "drawn" / "000000.png").is_file()
    rows = [json.loads(x) for x in (root / "drawn" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["detections"] and "error" in rows[1]


def _segmentation_steps(root):
    data, out = root / "ade", root / "run"
    return [["prepare-shapes", data, "--layout", "ade20k"],
            ["segment", "train", "--recipe", "segment_quickstart", "--data-dir", data, "--output", out],
            ["segment", "eval", "--checkpoint", out / "best.pt", "--data-dir", data, "--output", out / "eval.json"],
            ["segment", "eval", "--checkpoint", out / "best.pt", "--data-dir", data, "--multi-scale", "--output",
             out / "ms.json"],
            ["segment", "predict", data / "images" / "validation", "--checkpoint", out / "best.pt", "--output",
             root / "drawn"]]


@pytest.mark.slow
@pytest.mark.learning_run("segment", _segmentation_steps)
def test_segmentation_learns_the_shapes_through_the_cli(learning_runs):
    root, (prepare, train, evaluate, multi_scale, predict) = learning_runs.result("segment")
    out = root / "run"
    assert prepare.returncode == 0, prepare.stderr
    assert train.returncode == 0, train.stderr[-3000:]
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    scores = json.loads((out / "eval.json").read_text())
    assert scores["mIoU"] > 0.5 and set(scores["per_class"]) == {"background", "circle", "square", "triangle"}
    assert multi_scale.returncode == 0, multi_scale.stderr[-2000:]
    assert json.loads((out / "ms.json").read_text())["mIoU"] > 0.5
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert len(list((root / "drawn").glob("*.png"))) == 50


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_torchrun_two_processes_match_one_accumulating(task, tiny_coco, tiny_ade, tmp_path):
    """Two processes with batch 2 against one process accumulating two micro-batches of 2: the same micro-batches
    and the same per-micro-batch randomness (drop path, the detector's sampling), so the same weights."""
    data = tiny_coco if task == "detect" else tiny_ade
    length = ["--epochs", "2"] if task == "detect" else ["--iters", "4", "--eval-interval", "2"]
    common = [task, "train", "--recipe", f"{task}_quickstart", "--data-dir", str(data), "--batch-size", "2",
              "--global-batch-size", "4", "--drop-path", "0.1", "--warmup-iters", "0", *length]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run([*torchrun, "-m", "mambaout", *common, "--output", str(tmp_path / "two")],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "2 process(es)" in log and "global batch 4 (2 x 2 x 1 accumulation)" in log
    assert log.count("iteration 2/") == 1, "only rank 0 logs"
    one = subprocess.run([*CLI, *common, "--output", str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=900, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "global batch 4 (2 x 1 x 2 accumulation)" in one.stdout
    a, b = read_checkpoint(tmp_path / "one" / "last.pt"), read_checkpoint(tmp_path / "two" / "last.pt")
    assert a["iter"] == b["iter"] == 4 and len(b["rng"]) == 2
    # BatchNorm statistics are the one thing that differs by design: DDP keeps rank 0's, one process sees both
    # micro-batches.
    params = [k for k in a["model"] if not k.endswith(BN_BUFFERS)]
    assert len(params) > 100
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in params)
    assert worst <= 2e-5, worst
    from mambaout.dense.tasks import make_task

    cfg = resolve_config({"data_dir": str(data), "drop_path": 0.1}, recipe=f"{task}_quickstart",
                         cls=DetectConfig if task == "detect" else SegmentConfig)
    torch.manual_seed(cfg.seed)  # as the engine does before building the model: its initial weights
    start = make_task(cfg).model.state_dict()
    moved = max((b["model"][k] - start[k]).abs().max().item() for k in params)
    assert moved > 1e-3, "the weights compared are trained ones"
    if task == "segment":  # the evaluation across both ranks equals one process evaluating the saved weights
        r = run_cli("segment", "eval", "--checkpoint", tmp_path / "two" / "last.pt", "--data-dir", data,
                    "--workers", "0", "--output", tmp_path / "eval.json")
        assert r.returncode == 0, r.stderr[-2000:]
        alone = json.loads((tmp_path / "eval.json").read_text())
        assert alone["mIoU"] == pytest.approx(b["scores"]["mIoU"], abs=1e-9)
        assert alone["per_class"] == pytest.approx(b["scores"]["per_class"], abs=1e-9, nan_ok=True)
