"""Interrupted and failing training runs lose nothing: SIGTERM/SIGINT write a resumable checkpoint mid-epoch and
the resumed run ends exactly where an uninterrupted one does; kill -9 leaves the last checkpoint whole; a
non-finite loss stops without touching the last good checkpoint, or is skipped and counted."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import digits_subset, max_diff, on_loss_call, wait_for

from mambaout.classify.config import resolve_config
from mambaout.classify.train import NonFiniteLoss, train
from mambaout.models import read_checkpoint

RECIPE = ("model: mambaout_test\nimg_size: 32\nepochs: 2\nwarmup_epochs: 1\nbatch_size: 16\nlr: 0.002\n"
          "drop_path: 0.1\nmixup: 0.0\ncutmix: 0.0\nauto_augment: null\ncolor_jitter: 0.0\nreprob: 0.0\n"
          "hflip: 0.5\nscale: [0.6, 1.0]\nworkers: 2\nlog_interval: 1\n")


@pytest.fixture(scope="module")
def digits(digits, tmp_path_factory):
    """A quarter of the digits (36 train / 9 val images per class): enough steps per epoch to stop inside one."""
    return digits_subset(digits, tmp_path_factory.mktemp("quarter_digits"), 36, 9)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(RECIPE)
    return path


def _train_cmd(recipe, data, out, *extra):
    return [sys.executable, "-m", "mambaout", "train", "--recipe", str(recipe), "--data-dir", str(data),
            "--output", str(out), *map(str, extra)]


def _interrupt(recipe, digits, out, sig):
    proc = subprocess.Popen(_train_cmd(recipe, digits, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(proc, "epoch 1/2 step 5/")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, err
    lines = [x for x in err.strip().splitlines() if "skipped" not in x]
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name}" in lines[0] and "--resume" in lines[0], err
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 0 and 5 <= ckpt["batch"] < 22, (ckpt["epoch"], ckpt.get("batch"))
    return ckpt


@pytest.mark.slow
def test_sigint_mid_epoch_writes_a_resumable_checkpoint(digits, recipe, tmp_path):
    _interrupt(recipe, digits, tmp_path / "run", signal.SIGINT)


@pytest.mark.slow
def test_sigterm_mid_epoch_and_resume_match_an_uninterrupted_run(digits, recipe, tmp_path):
    straight = subprocess.run(_train_cmd(recipe, digits, tmp_path / "straight"), capture_output=True, text=True,
                              timeout=1200)
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "split"
    ckpt = _interrupt(recipe, digits, out, signal.SIGTERM)

    resumed = subprocess.run(_train_cmd(recipe, digits, out, "--resume", out / "last.pt"), capture_output=True,
                             text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at epoch 1, step {ckpt['batch'] + 1}" in resumed.stdout
    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(out / "last.pt")
    assert a["epoch"] == b["epoch"] == 1 and "batch" not in b
    assert max_diff(a["model"], b["model"]) <= 1e-6
    assert abs(a["metrics"]["train_loss"] - b["metrics"]["train_loss"]) < 1e-6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_inside_the_checkpoint_write_leaves_the_previous_checkpoint_whole(digits, recipe, tmp_path):
    out, flag = tmp_path / "run", tmp_path / "in-write"
    # The second write of last.pt (after epoch 2) stops after 64 KiB; the kill lands inside it.
    env = {**os.environ, "MAMBAOUT_FAULT_PAUSE_SAVE": f"last.pt:2:{flag}"}
    proc = subprocess.Popen(_train_cmd(recipe, digits, out, "--epochs", "3", "--log-interval", "1000"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert flag.exists(), "the run never reached its second checkpoint write"
    previous = (out / "last.pt").read_bytes()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    torn = list(out.glob(".last.pt.*.tmp"))
    assert len(torn) == 1 and 1 << 16 <= torn[0].stat().st_size < len(previous), "killed inside the write"
    with pytest.raises((RuntimeError, EOFError)):  # the torn temporary is not a checkpoint...
        torch.load(torn[0], weights_only=True)
    assert (out / "last.pt").read_bytes() == previous  # ...and last.pt is the previous one, untouched
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 0 and {"model", "optimizer", "rng"} <= set(ckpt)
    # resuming finishes the run and clears the torn temporary
    r = subprocess.run(_train_cmd(recipe, digits, out, "--epochs", "3", "--log-interval", "1000", "--resume",
                                  out / "last.pt"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_checkpoint(out / "last.pt")["epoch"] == 2
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_atomic_save_keeps_the_old_file_when_the_write_fails(tmp_path):
    from mambaout.engine.checkpoint import atomic_save

    path = atomic_save({"v": torch.ones(3)}, tmp_path / "c.pt")
    old_mask = os.umask(0o027)  # a group-shared cluster folder: the group must be able to read the checkpoint
    try:
        assert atomic_save({"v": torch.ones(3)}, path).stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old_mask)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot be saved")

    with pytest.raises(RuntimeError, match="cannot be saved"):
        atomic_save({"v": torch.zeros(3), "x": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def _small_cfg(data, out, **kw):
    base = dict(model="mambaout_test", data_dir=str(data), output=str(out), epochs=2, warmup_epochs=0,
                batch_size=32, workers=0, drop_path=0.0, lr=2e-3, log_interval=1000)
    return resolve_config({**base, **kw}, recipe="quickstart")


def _nan_on_call(monkeypatch, bad_calls: set[int]):
    """Make the criterion return NaN on the given (1-based) calls."""
    on_loss_call(monkeypatch, lambda n, loss: loss * float("nan") if n in bad_calls else loss)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path, monkeypatch):
    steps = 360 // 32
    _nan_on_call(monkeypatch, {steps + 3})  # in the second epoch
    with pytest.raises(NonFiniteLoss, match="loss is not finite at epoch 2") as e:
        train(_small_cfg(digits, tmp_path))
    assert "last.pt" in str(e.value)
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nonfinite_loss_skip_counts_and_continues(digits, tmp_path, monkeypatch):
    _nan_on_call(monkeypatch, {2, 5})
    summary = train(_small_cfg(digits, tmp_path, nonfinite="skip", epochs=1))
    assert summary["skipped_steps"] == 2
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert ckpt["metrics"]["skipped_steps"] == 2


def test_nonfinite_stop_through_the_cli_is_one_line(digits, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mambaout", "train", "--recipe", "quickstart", "--model",
                        "mambaout_test", "--data-dir", str(digits), "--output", str(tmp_path), "--epochs", "1",
                        "--warmup-epochs", "0", "--lr", "1e30", "--workers", "0"],
                       capture_output=True, text=True, timeout=600, env={**os.environ})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "loss is not finite" in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "last.pt").exists()
