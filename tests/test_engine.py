"""The training engine is task-agnostic: a task written here, knowing nothing of images, plugs into the same loop
and gets accumulation, the non-finite policy, stops, checkpoints and exact resume from it."""
import dataclasses
import math

import pytest
import torch
from torch import nn

from mambaout.engine.config import RunConfig, default, resolve_config
from mambaout.engine.loop import NonFiniteLoss, Task, train_task
from mambaout.engine.signals import RunInterrupted
from mambaout.models.weights import read_checkpoint


@dataclasses.dataclass
class LineConfig(RunConfig):
    model: str = "line"
    batch_size: int = default(RunConfig, "batch_size", 4)
    lr: float | None = 0.3
    steps: int = 12
    eval_interval: int | None = 4
    unit = "steps"


class LineTask(Task):
    """Fit y = 3x - 1 with one linear layer; a chunk is ``eval_interval`` steps."""

    name = "line"

    def __init__(self, cfg, poison=()):
        self.cfg, self.poison, self.calls = cfg, set(poison), 0
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 1, generator=g)
        self.train_set = list(zip(x, 3 * x - 1))
        self.val_set = self.train_set[:16]
        self.num_classes = 0
        self.model = nn.Linear(1, 1)

    def optimizer(self, model, peak_lr):
        return torch.optim.SGD(model.parameters(), lr=peak_lr)

    def wrap(self, model, info):
        return model

    def schedule(self, steps_per_epoch, global_batch):
        self.spe = steps_per_epoch
        return self.cfg.steps

    def lr(self, step):
        return self.cfg.lr * (1 - step / self.cfg.steps)

    def chunk_end(self, step):
        return (step // self.cfg.eval_interval + 1) * self.cfg.eval_interval

    def end_step(self, start):
        return self.cfg.steps if self.cfg.stop_after is None else min(self.cfg.steps, start + self.cfg.stop_after)

    def batches(self, start, info, accum):
        from torch.utils.data import DataLoader

        epoch, offset = divmod(start, self.spe)
        while True:
            order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(epoch)).tolist()
            loader = DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=order, drop_last=True)
            yield from list(loader)[offset * accum: self.spe * accum]
            epoch, offset = epoch + 1, 0

    def micro_batch(self, batch, info, step, micro, accum):
        return batch, len(batch[0])

    def forward_loss(self, wrapped, inputs):
        self.calls += 1
        x, y = inputs
        loss = nn.functional.mse_loss(wrapped(x), y)
        return (loss * math.nan if self.calls in self.poison else loss), {"loss_mse": loss.detach()}

    def evaluate_chunk(self, run, row):
        x = torch.stack([a for a, _ in self.val_set])
        y = torch.stack([b for _, b in self.val_set])
        with torch.no_grad():
            row["val_mse"] = float(nn.functional.mse_loss(run.model(x), y))
        return -row["val_mse"], {"val_mse": row["val_mse"]}

    def start_line(self, run):
        return f"line: {self.cfg.steps} steps"

    def chunk_desc(self, start, end):
        return f"steps {start + 1}-{end}"

    def position(self, step):
        return {"step": step}

    def where(self, step, inside):
        return f"at step {step}"

    def at_step(self, step):
        return f"at step {step}"

    def chunk_line(self, step, row, scores):
        return f"step {step}: mse {row['val_mse']:.4f}"

    def plot(self, metrics, row):
        pass

    def checkpoint(self, run, common, row, scores, inside):
        return {**common, "step": run.step, "best": run.best}

    def read_resume(self, path):
        return read_checkpoint(path)

    def restore(self, ckpt):
        return ckpt["step"], ckpt["best"]

    def summary(self, step, best, row, scores):
        return {"step": step, "best": best, **row}


def _cfg(tmp_path, name, **kw):
    return resolve_config({"output": str(tmp_path / name), "device": "cpu", "workers": 0, **kw}, cls=LineConfig)


def test_a_new_task_learns_and_writes_what_every_task_writes(tmp_path):
    summary = train_task(_cfg(tmp_path, "a", global_batch_size=8), LineTask)
    assert summary["step"] == 12 and summary["val_mse"] < 1.0 and summary["loss_mse"] > 0
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"last.pt", "best.pt", "metrics.csv", "config.yaml",
                                                              "summary.json", "train.log"}
    assert read_checkpoint(tmp_path / "a" / "last.pt")["config"]["global_batch_size"] == 8


def test_a_stop_inside_a_chunk_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import mambaout.engine.loop as loop

    whole = train_task(_cfg(tmp_path, "whole"), LineTask)
    calls = {"n": 0}

    class StopAfterFive(loop.StopSignal):
        @property
        def requested(self):
            calls["n"] += 1
            return calls["n"] >= 6

        @requested.setter
        def requested(self, value):
            pass

    monkeypatch.setattr(loop, "StopSignal", StopAfterFive)
    with pytest.raises(RunInterrupted, match="at step 5"):
        train_task(_cfg(tmp_path, "cut"), LineTask)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["partial"][0]["steps"] == 1  # step 5, the first of chunk 2
    resumed = train_task(_cfg(tmp_path, "cut", resume=str(tmp_path / "cut" / "last.pt")), LineTask)
    a = read_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["train_loss"] == whole["train_loss"]  # the resumed chunk's row sums the steps before the stop


def test_a_non_finite_loss_stops_or_is_skipped_and_counted(tmp_path):
    with pytest.raises(NonFiniteLoss, match="at step 5"):
        train_task(_cfg(tmp_path, "stop"), lambda cfg: LineTask(cfg, poison={6}))
    assert read_checkpoint(tmp_path / "stop" / "last.pt")["step"] == 4  # the last good chunk's checkpoint
    summary = train_task(_cfg(tmp_path, "skip", nonfinite="skip"), lambda cfg: LineTask(cfg, poison={10}))
    assert summary["skipped_steps"] == 1 and math.isfinite(summary["train_loss"])
