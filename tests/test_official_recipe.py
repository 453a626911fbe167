"""The paper recipes are the official run (yuweihao/MambaOut train.py on timm 0.6.11), not only the paper's prose:
310 epochs with the per-epoch cosine laid over the warm-up, random training interpolation, random erasing after
mixup on the batch, and the size recipe wherever a paper model is asked for."""
import pytest
import torch
from conftest import cli_in_process

from mambaout.classify.config import TrainConfig, resolve_config
from mambaout.classify.schedule import epoch_lr, learning_rate, schedule_rows

# The official run's learning rate (4e-3 at global batch 4096) at the start of these epochs: timm 0.6.11's
# CosineLRScheduler(t_initial=300, lr_min=1e-5, warmup_t=20, warmup_lr_init=1e-6, warmup_prefix=False), stepped
# once per epoch, and --cooldown-epochs 10 (310 epochs, the last 10 at lr_min).
OFFICIAL = {0: 1e-6, 10: 2.0005e-3, 20: 3.95640e-3, 150: 2.005e-3, 299: 1.01094e-5, 305: 1e-5}


@pytest.mark.parametrize("model", ["mambaout_femto", "mambaout_kobe", "mambaout_tiny", "mambaout_small",
                                   "mambaout_base"])
def test_paper_schedule_is_the_official_runs(model):
    cfg = resolve_config({"model": model})
    assert (cfg.epochs, cfg.cooldown_epochs, cfg.warmup_epochs, cfg.sched, cfg.seed) == (300, 10, 20, "epoch", 42)
    rows = schedule_rows(cfg, world_size=8)
    assert len(rows) == 310 and rows[-1][0] == 309
    for epoch, lr in OFFICIAL.items():
        assert rows[epoch][1] == pytest.approx(lr, rel=1e-5), epoch


def test_epoch_schedule_equals_timms_cosine_scheduler_as_the_official_run_set_it_up():
    from timm.scheduler import CosineLRScheduler

    cfg = resolve_config({"model": "mambaout_tiny"})
    peak = learning_rate(cfg, 4096)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs, lr_min=cfg.min_lr, warmup_t=cfg.warmup_epochs,
                              warmup_lr_init=cfg.warmup_lr, warmup_prefix=False, cycle_limit=1, t_in_epochs=True)
    for epoch in range(cfg.epochs + cfg.cooldown_epochs):
        sched.step(epoch)
        assert epoch_lr(cfg, epoch, peak) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch


def test_print_schedule_prints_every_epoch_as_csv(capsys):
    code, out, err = cli_in_process(["train", "--print-schedule"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "epoch,lr" and len(lines) == 311
    printed = {int(e): float(lr) for e, lr in (line.split(",") for line in lines[1:])}
    assert all(printed[e] == pytest.approx(lr, rel=1e-5) for e, lr in OFFICIAL.items())


def test_the_per_step_schedule_stays_available(small_digits, capsys):
    code, _, err = cli_in_process(["train", "--sched", "step", "--print-schedule"], capsys)
    assert code == 2 and "give --data-dir" in err
    code, out, err = cli_in_process(["train", "--recipe", "quickstart", "--model", "mambaout_test", "--data-dir",
                                     small_digits, "--batch-size", "16", "--print-schedule"], capsys)
    assert code == 0, err
    rows = [float(line.split(",")[1]) for line in out.splitlines()[1:]]
    cfg = resolve_config({"model": "mambaout_test"}, recipe="quickstart")
    assert cfg.sched == "step" and len(rows) == cfg.epochs and rows[0] == pytest.approx(cfg.warmup_lr)
    # Mid-warm-up epochs start between the warm-up's ends: the lr moved with every step of the epoch before.
    assert cfg.warmup_lr < rows[1] <= 2e-3


@pytest.mark.parametrize("ask", ["api_default", "api_model", "cli_default", "cli_model"])
def test_every_entry_point_gets_the_size_recipe(ask, capsys):
    import yaml

    if ask == "api_default":
        cfg = resolve_config({}).to_dict()
    elif ask == "api_model":
        cfg = resolve_config({"model": "mambaout_small"}).to_dict()
    else:
        argv = ["train", "--print-config"] + (["--model", "mambaout_small"] if ask == "cli_model" else [])
        code, out, err = cli_in_process(argv, capsys)
        assert code == 0, err
        cfg = yaml.safe_load(out)
    small = ask.endswith("model")
    assert cfg["model"] == ("mambaout_small" if small else "mambaout_tiny")
    assert cfg["drop_path"] == (0.4 if small else 0.2) and cfg["global_batch_size"] == 4096
    assert cfg["sched"] == "epoch" and cfg["cooldown_epochs"] == 10 and cfg["train_interpolation"] == "random"
    # A model without a paper recipe keeps the plain defaults, and an explicit recipe wins.
    assert resolve_config({"model": "mambaout_test"}).recipe is None
    assert resolve_config({"model": "mambaout_tiny"}, recipe="quickstart").sched == "step"


def test_training_interpolation_is_its_own_setting():
    from mambaout.classify.train import _eval_data_config, _train_transform

    cfg = resolve_config({"model": "mambaout_tiny"})
    crop = _train_transform(cfg).transforms[0]
    assert type(crop).__name__ == "RandomResizedCropAndInterpolation" and len(crop.interpolation) == 2  # random
    assert _eval_data_config(cfg)["interpolation"] == "bicubic"  # evaluation keeps the model's own
    plain = resolve_config({"model": "mambaout_test"})
    assert plain.train_interpolation is None and _train_transform(plain).transforms[0].interpolation is not None
    assert not isinstance(_train_transform(plain).transforms[0].interpolation, (tuple, list))


def test_random_erasing_comes_after_mixup_on_the_batch(small_digits, monkeypatch):
    from mambaout.classify.train import ClassifyTask
    from mambaout.engine import distributed as D

    cfg = resolve_config({"model": "mambaout_test", "data_dir": str(small_digits), "img_size": 32, "reprob": 1.0,
                          "mixup": 0.8, "cutmix": 0.0, "workers": 0, "batch_size": 8}, recipe="quickstart")
    torch.manual_seed(0)
    task = ClassifyTask(cfg)
    info = D.DistInfo()
    task.check(info)
    names = [type(t).__name__ for t in task.train_set.dataset.dataset.transform.transforms]
    assert "RandomErasing" not in names  # not per sample any more
    order = []
    mix, erase = task.mixup, task.erase
    monkeypatch.setattr(task, "mixup", lambda x, y: (order.append("mixup"), mix(x, y))[1])
    monkeypatch.setattr(task, "erase", lambda x: (order.append("erase"), erase(x))[1])
    images = torch.zeros(8, 3, 32, 32)
    (out, targets), seen = task.micro_batch((images, torch.arange(8) % 10), info, 0, 0, 1)
    assert order == ["mixup", "erase"] and seen == 8 and targets.shape == (8, 10)
    assert all((out[i] != 0).any() for i in range(8))  # reprob 1: every image of the batch got its noise box
    assert TrainConfig().reprob == 0.25 and resolve_config({}).reprob == 0.25


def test_cooldown_epochs_run_at_min_lr_after_the_schedule(small_digits, tmp_path):
    from mambaout.classify.train import train
    from mambaout.models.weights import read_checkpoint

    cfg = resolve_config({"model": "mambaout_test", "data_dir": str(small_digits), "output": str(tmp_path),
                          "epochs": 2, "warmup_epochs": 1, "cooldown_epochs": 1, "sched": "epoch", "batch_size": 16,
                          "workers": 0, "log_interval": 1000}, recipe="quickstart")
    summary = train(cfg)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert summary["epoch"] == 3 and len(rows) == 4
    assert summary["lr"] == cfg.min_lr and read_checkpoint(tmp_path / "last.pt")["epoch"] == 2
