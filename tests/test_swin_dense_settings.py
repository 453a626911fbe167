"""Where the paper is silent on COCO/ADE20K, the dense defaults follow Swin's mmdet/mmseg configs (which the
authors started from, official repo issue #251): weight decay exempts the LayerNorms only, the segmentation loss
averages over all pixels, and segmentation evaluates whole images."""
import warnings

import pytest
import torch
from torch import nn

from mambaout.dense.config import DetectConfig, SegmentConfig
from mambaout.dense.segmentation import segmentation_loss, segmentor_from_name
from mambaout.dense.train import RecipeWarning, norm_exempt_groups
from mambaout.engine.config import resolve_config


def test_weight_decay_spares_the_layernorms_only():
    model = segmentor_from_name("mambaout_test", 4, channels=16, aux_channels=8)
    groups = norm_exempt_groups(model, 0.01)
    decayed, free = ({id(p) for p in g["params"]} for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm):
                assert id(p) in free, f"{name}.{pname}"
            else:  # conv and linear biases, the heads' BatchNorm: decayed, as Swin's configs do
                assert id(p) in decayed, f"{name}.{pname}"
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(p.ndim == 1 and id(p) in decayed for p in model.parameters())


def test_a_run_started_with_the_old_groups_resumes_with_them():
    from mambaout.dense.tasks import SegmentTask
    from mambaout.engine.optim import param_groups

    cfg = resolve_config({"model": "mambaout_test", "channels": 16, "aux_channels": 8}, cls=SegmentConfig)
    task = SegmentTask(cfg, build_data=False, num_classes=4)
    old = [len(g["params"]) for g in param_groups(task.model, cfg.weight_decay)]
    with pytest.warns(RecipeWarning, match="resuming with the weight-decay groups this run started with"):
        opt = task.optimizer(task.model, 1e-4, resumed=old)
    assert [len(g["params"]) for g in opt.param_groups] == old
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = task.optimizer(task.model, 1e-4)
    assert [len(g["params"]) for g in new.param_groups] != old


def test_the_segmentation_loss_averages_over_every_pixel_by_default():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[:, :2] = 255  # half the pixels unlabelled
    labelled = segmentation_loss(logits, labels, average="labelled")
    every = segmentation_loss(logits, labels)
    assert every == pytest.approx(labelled.item() / 2)
    plain = nn.functional.cross_entropy(logits, labels, ignore_index=255)  # mean over the labelled pixels
    assert labelled == pytest.approx(plain.item())
    assert SegmentConfig().loss_average == "all"
    assert resolve_config({}, recipe="segment_quickstart", cls=SegmentConfig).loss_average == "labelled"
    with pytest.raises(ValueError, match="average must be"):
        segmentation_loss(logits, labels, average="mean")


def test_segmentation_evaluates_whole_images_by_default_with_slide_available():
    assert SegmentConfig().eval_mode == "whole"
    assert resolve_config({"eval_mode": "slide"}, cls=SegmentConfig).eval_mode == "slide"
    assert DetectConfig().weight_decay == 0.05 and SegmentConfig().weight_decay == 0.01


def test_segment_print_schedule_is_mmsegs_poly_after_the_linear_warm_up(capsys):
    from conftest import cli_in_process

    code, out, err = cli_in_process(["segment", "train", "--print-schedule"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    rows = {int(i): float(lr) for i, lr in (line.split(",") for line in lines[1:])}
    assert lines[0] == "iteration,lr" and set(range(0, 160_000, 100)) <= set(rows) and 159_999 in rows
    assert rows[0] == pytest.approx(1e-4 * 1e-6)  # warm-up from lr × warmup_ratio
    assert rows[1500] == pytest.approx(1e-4 * (1 - 1500 / 160_000))  # the warm-up's end: poly (power 1) from here
    assert rows[80_000] == pytest.approx(0.5e-4)


def test_detect_print_schedule_turns_at_epochs_8_and_11(tmp_path, capsys):
    from conftest import cli_in_process, write_small_inputs

    write_small_inputs(tmp_path, ["a"])
    code, _, err = cli_in_process(["detect", "train", "--print-schedule"], capsys)
    assert code == 2 and "needs --data-dir" in err
    code, out, err = cli_in_process(["detect", "train", "--print-schedule", "--data-dir", tmp_path / "coco",
                                     "--batch-size", "1", "--global-batch-size", "1", "--warmup-iters", "2"], capsys)
    assert code == 0, err
    rows = {int(i): float(lr) for i, lr in (line.split(",") for line in out.splitlines()[1:])}
    ipe = 4  # 4 training images, one per iteration
    assert max(rows) == 12 * ipe - 1
    assert rows[2] == pytest.approx(1e-4)  # the warm-up's end
    assert rows[8 * ipe] == pytest.approx(1e-5) and rows[11 * ipe] == pytest.approx(1e-6)


@pytest.mark.parametrize("task, model, rate", [("detect", "mambaout_tiny", 0.2), ("detect", "mambaout_base", 0.3),
                                               ("segment", "mambaout_tiny", 0.3), ("segment", "mambaout_base", 0.6),
                                               ("detect", "mambaout_test", 0.1)])
def test_drop_path_per_task_and_size_has_a_source(task, model, rate):
    from timm.layers import DropPath

    from mambaout.dense.tasks import TASKS

    cls = DetectConfig if task == "detect" else SegmentConfig
    cfg = resolve_config({"model": model, "channels": 16, "box_fc": 32} if task == "detect"
                         else {"model": model, "channels": 16, "aux_channels": 8}, cls=cls)
    t = TASKS[task](cfg, build_data=False, num_classes=3)
    rates = [m.drop_prob for m in t.model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(rate)  # rising linearly to the rate at the last block
    explicit = TASKS[task](resolve_config({**cfg.to_dict(), "drop_path": 0.05}, cls=cls), build_data=False,
                           num_classes=3)
    assert max(m.drop_prob for m in explicit.model.modules() if isinstance(m, DropPath)) == pytest.approx(0.05)
