"""Training: the quickstart through the CLI, resume and accumulation equivalence, DDP on CPU, bad configs."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import cli_in_process

from mambaout import train as train_mod
from mambaout.classify.config import ConfigError, resolve_config
from mambaout.classify.train import lr_at, train
from mambaout.models import read_checkpoint

CLI = [sys.executable, "-m", "mambaout"]


def run_cli(*args, timeout=2400, env=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def small_cfg(data_dir, output, **kw):
    base = dict(model="mambaout_test", data_dir=str(data_dir), output=str(output), epochs=2, warmup_epochs=1,
                batch_size=16, workers=0, drop_path=0.0, lr=2e-3, log_interval=1000)
    return resolve_config({**base, **kw}, recipe="quickstart")


def weights(path):
    return read_checkpoint(path)["model"]


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"max weight difference {worst}"


def _quickstart_steps(root):
    """The README's main job, as it gives it."""
    data, out = root / "digits", root / "run"
    return [["prepare-digits", data],
            ["train", "--recipe", "quickstart", "--data-dir", data, "--output", out],
            ["eval", "--checkpoint", out / "best.pt", "--data-dir", data / "val", "--output", out / "e.json"]]


@pytest.mark.slow
@pytest.mark.learning_run("quickstart", _quickstart_steps)
def test_quickstart_reaches_97_percent_through_the_cli(learning_runs):
    root, (prepare, train_run, evaluate) = learning_runs.result("quickstart")
    out = root / "run"
    assert prepare.returncode == 0, prepare.stderr
    assert train_run.returncode == 0, train_run.stderr[-2000:]
    for name in ("best.pt", "last.pt", "curves.png", "metrics.csv", "metrics.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    assert evaluate.returncode == 0, evaluate.stderr
    result = json.loads((out / "e.json").read_text())
    assert result["images"] == 360
    assert result["top1"] >= 97.0, result
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 15


def test_resume_continues_to_the_same_weights(small_digits, tmp_path):
    # Random crops and drop path on: the augmentation and drop-path streams must resume exactly too.
    kw = dict(drop_path=0.1, scale=(0.6, 1.0))
    train(small_cfg(small_digits, tmp_path / "straight", **kw))
    train(small_cfg(small_digits, tmp_path / "split", stop_after=1, **kw))
    first = read_checkpoint(tmp_path / "split" / "last.pt")
    assert first["epoch"] == 0
    train(small_cfg(small_digits, tmp_path / "split", resume=str(tmp_path / "split" / "last.pt"), **kw))
    assert read_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "split" / "last.pt"), 1e-6)


def test_accumulation_matches_the_large_batch(small_digits, tmp_path):
    train(small_cfg(small_digits, tmp_path / "big", epochs=1, warmup_epochs=0, batch_size=16))
    train(small_cfg(small_digits, tmp_path / "acc", epochs=1, warmup_epochs=0, batch_size=8, global_batch_size=16))
    assert_same_weights(weights(tmp_path / "big" / "last.pt"), weights(tmp_path / "acc" / "last.pt"), 2e-5)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(small_digits, tmp_path):
    recipe = tmp_path / "plain.yaml"
    recipe.write_text("model: mambaout_test\nimg_size: 32\nepochs: 1\nwarmup_epochs: 0\nlr: 0.002\n"
                      "drop_path: 0.0\nmixup: 0.0\ncutmix: 0.0\nauto_augment: null\ncolor_jitter: 0.0\n"
                      "reprob: 0.0\nhflip: 0.0\nscale: [1.0, 1.0]\nratio: [1.0, 1.0]\nworkers: 0\n")
    common = ["--recipe", recipe, "--data-dir", small_digits]
    r1 = run_cli("train", *common, "--output", tmp_path / "one", "--batch-size", 16)
    assert r1.returncode == 0, r1.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r2 = subprocess.run([*torchrun, "-m", "mambaout", "train", *map(str, common), "--output",
                         str(tmp_path / "two"), "--batch-size", "8", "--global-batch-size", "16"],
                        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt"), 2e-5)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert abs(one["top1"] - two["top1"]) < 1e-6, "evaluation must be reduced over both ranks"
    # Only rank 0 logs and writes: one epoch line, and the same files as the single-process run.
    assert (r2.stdout + r2.stderr).count("epoch 1/1: train loss") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.parametrize("args,needle", [
    (["--model", "mambaout_huge"], "unknown model 'mambaout_huge'"),
    (["--data-dir", "/nonexistent/data"], "data folder not found: /nonexistent/data/train"),
    (["--batch-size", "16", "--global-batch-size", "40"], "global batch 40 is not a multiple of batch size 16"),
    (["--amp", "fp32"], "setting 'amp' must be one of auto, none, bf16, fp16"),
    (["--recipe", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
])
def test_bad_configuration_exits_with_one_line(args, needle, small_digits, tmp_path, capsys):
    base = ["--recipe", "quickstart", "--data-dir", small_digits, "--output", tmp_path / "o", "--epochs", "1"]
    code, _, err = cli_in_process(["train", *base, *args], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "o").exists(), "refused before writing anything"


def test_empty_class_folder_is_named(small_digits, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_digits, data)
    for f in (data / "train" / "3").iterdir():
        f.unlink()
    code, _, err = cli_in_process(["train", "--recipe", "quickstart", "--data-dir", data, "--output", tmp_path / "o"],
                                  capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and f"{data / 'train'}: Found no valid file for the classes 3" in err


def test_config_precedence_and_print_config(tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: mambaout_femto\nepochs: 7\nwarmup_epochs: 1\nlr: 0.01\n")
    code, out, err = cli_in_process(["train", "--recipe", recipe, "--lr", "0.5", "--print-config"], capsys)
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["epochs"] == 7 and cfg["lr"] == 0.5 and cfg["model"] == "mambaout_femto"  # recipe < flag
    assert cfg["weight_decay"] == 0.05  # default
    # Without --recipe, a paper model takes its own recipe.
    code, out, err = cli_in_process(["train", "--model", "mambaout_small", "--print-config"], capsys)
    assert code == 0, err
    paper = yaml.safe_load(out)
    assert paper["drop_path"] == 0.4 and paper["global_batch_size"] == 4096 and paper["epochs"] == 300
    assert paper["auto_augment"] == "rand-m9-mstd0.5-inc1" and paper["mixup"] == 0.8 and paper["reprob"] == 0.25


def test_recipe_errors_name_the_setting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="setting 'epochs' expects int, got 'many'"):
        resolve_config(recipe=str(bad))
    bad.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        resolve_config(recipe=str(bad))


def test_paper_recipes_drop_path_and_lr_scaling():
    from mambaout.classify.train import accumulation_steps, learning_rate

    for model, dp in (("femto", 0.025), ("kobe", 0.025), ("tiny", 0.2), ("small", 0.4), ("base", 0.6)):
        cfg = resolve_config(recipe=f"mambaout_{model}")
        assert cfg.drop_path == dp and cfg.model == f"mambaout_{model}"
        assert accumulation_steps(cfg, 8) == 4  # 8 GPUs x 128 x 4 = 4096
        assert learning_rate(cfg, 4096) == pytest.approx(4e-3)


def test_lr_schedule_is_warmup_then_cosine():
    cfg = resolve_config({"lr": 1.0})
    assert lr_at(0, 100, 10, 1.0, cfg) == pytest.approx(cfg.warmup_lr)
    assert lr_at(10, 100, 10, 1.0, cfg) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, cfg) == pytest.approx((1.0 + cfg.min_lr) / 2)
    assert lr_at(100, 100, 10, 1.0, cfg) == pytest.approx(cfg.min_lr)


def test_checkpoint_is_plain_data_and_fine_tunes(small_digits, tmp_path):
    train(small_cfg(small_digits, tmp_path / "a", epochs=1, warmup_epochs=0))
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)  # raises on any pickled object
    assert ckpt["class_names"] == [str(i) for i in range(10)] and ckpt["config"]["model"] == "mambaout_test"
    # Fine-tune on a 5-class subset from that checkpoint: only the head is re-initialised.
    sub = tmp_path / "five"
    for split in ("train", "val"):
        for c in range(5):
            shutil.copytree(small_digits / split / str(c), sub / split / str(c))
    with pytest.warns(UserWarning, match="10 classes, model has 5"):
        train(small_cfg(sub, tmp_path / "b", epochs=1, warmup_epochs=0, checkpoint=str(tmp_path / "a" / "last.pt")))
    assert read_checkpoint(tmp_path / "b" / "last.pt")["model"]["head.fc.weight"].shape[0] == 5


def _spy_training(monkeypatch):
    """Record what the training loop really does: the model as built, each forward's input layout and autocast
    state, each clipping call, each optimizer step's head bias, and the activation-checkpoint calls."""
    import mambaout.engine.loop as loop
    import mambaout.models.mambaout as mm

    seen = {"built": None, "forwards": [], "clips": [], "steps": [], "checkpoints": 0}
    real_build, real_step, real_clip, real_ckpt = train_mod.build_model, loop.optimizer_step, \
        torch.nn.utils.clip_grad_norm_, mm.checkpoint

    def build(*a, **kw):
        model = real_build(*a, **kw)
        seen["built"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["model"] = model

        def pre(mod, args):
            x = args[0]
            seen["forwards"].append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                                     torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
                                     mod.training))
        model.register_forward_pre_hook(pre)
        return model

    def clip(params, max_norm, *a, **kw):
        params = list(params)
        total = real_clip(params, max_norm, *a, **kw)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        seen["clips"].append((max_norm, float(total), float(after)))
        return total

    def step(model, *a, **kw):
        real_step(model, *a, **kw)
        seen["steps"].append(seen["model"].head.fc.bias.detach().clone())

    def ckpt(*a, **kw):
        seen["checkpoints"] += 1
        return real_ckpt(*a, **kw)

    monkeypatch.setattr(train_mod, "build_model", build)
    monkeypatch.setattr(loop, "optimizer_step", step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(mm, "checkpoint", ckpt)
    return seen


def test_bf16_clip_channels_last_and_grad_checkpointing_are_applied(small_digits, tmp_path, monkeypatch):
    seen = _spy_training(monkeypatch)
    summary = train(small_cfg(small_digits, tmp_path / "m", epochs=1, warmup_epochs=0, amp="bf16",
                              clip_grad=0.05, channels_last=True, grad_checkpointing=True))
    train_forwards = [f for f in seen["forwards"] if f[2]]
    assert train_forwards and all(cl and dtype == torch.bfloat16 for cl, dtype, _ in train_forwards)
    assert len(seen["clips"]) == len(seen["steps"]) > 0
    for max_norm, before, after in seen["clips"]:
        assert max_norm == 0.05 and after <= 0.05 * (1 + 1e-3) and before > after  # the gradients were clipped
    n_blocks = sum(len(s.blocks) for s in seen["model"].stages)
    assert seen["checkpoints"] == n_blocks * len(train_forwards)  # every block, every training forward
    assert 0 <= summary["top1"] <= 100 and torch.isfinite(torch.tensor(summary["train_loss"]))


def test_ema_is_the_exponential_average_of_the_steps(small_digits, tmp_path, monkeypatch):
    from timm.utils import ModelEmaV3

    seen = _spy_training(monkeypatch)
    updates, real_update = [], ModelEmaV3.update

    def update(self, model, step=None):
        updates.append((self.get_decay(step), model.head.fc.bias.detach().clone()))
        return real_update(self, model, step=step)

    monkeypatch.setattr(ModelEmaV3, "update", update)
    summary = train(small_cfg(small_digits, tmp_path / "e", epochs=1, warmup_epochs=0, ema=True, ema_decay=0.9))
    assert len(updates) == len(seen["steps"]) > 3  # once per optimizer step
    assert [d for d, _ in updates[2:]] == [0.9] * (len(updates) - 2)  # the configured decay (timm copies at first)
    ema = seen["built"]["head.fc.bias"].clone()
    for d, bias in updates:
        ema = d * ema + (1 - d) * bias
    ckpt = read_checkpoint(tmp_path / "e" / "last.pt")
    torch.testing.assert_close(ckpt["ema"]["head.fc.bias"], ema, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ckpt["ema"]["head.fc.bias"], ckpt["model"]["head.fc.bias"])
    assert "ema_top1" in summary and ckpt["model"].keys() == ckpt["ema"].keys()


@pytest.mark.slow
def test_compiled_training_runs_compiled(small_digits, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    summary = train(small_cfg(small_digits, tmp_path / "c", epochs=1, warmup_epochs=0, compile=True))
    assert torch.isfinite(torch.tensor(summary["train_loss"]))
    # dynamo really compiled the model (no silent eager fallback) and found nothing to break the graph on
    assert counters["stats"]["unique_graphs"] >= 1
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_fp16_on_cpu_is_refused(small_digits, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU")
    with pytest.raises(ConfigError, match="fp16"):
        train(small_cfg(small_digits, tmp_path / "f", amp="fp16", device="cpu"))


def test_no_weight_decay_on_ssm_decay_parameters():
    from mambaout import create_model
    from mambaout.classify.train import param_groups

    model = create_model("mambaout_test_ssm")
    decayed = {id(p) for p in param_groups(model, 0.05)[0]["params"]}
    a_logs = [p for n, p in model.named_parameters() if n.endswith("A_log")]
    assert a_logs and not any(id(p) in decayed for p in a_logs)
