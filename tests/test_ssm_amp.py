"""The SSM mixer under mixed precision: the scan computes in float32 inside bf16 autocast, and
``mambaout_test_ssm`` trains 300 steps under bf16 autocast with no non-finite loss (Vim #30, MambaVision #24/#38
report NaN losses there)."""
import json

import torch

import mambaout
from mambaout.models.mixers import scan


def test_the_scan_computes_in_float32_under_bf16_autocast(monkeypatch):
    seen = []
    real = scan._compute_dtype

    def record(dtype):
        out = real(dtype)
        seen.append((dtype, out, torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(scan, "_compute_dtype", record)
    model = mambaout.create_model("mambaout_test_ssm", num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(1).mean()
    loss.backward()
    assert seen, "the scan ran"
    assert {out for _, out, _ in seen} == {torch.float32}, seen
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_three_hundred_steps_under_bf16_autocast_stay_finite(small_digits, tmp_path):
    from mambaout.classify.config import resolve_config
    from mambaout.classify.train import train

    cfg = resolve_config({"model": "mambaout_test_ssm", "data_dir": str(small_digits), "output": str(tmp_path),
                          "epochs": 15, "warmup_epochs": 1, "batch_size": 8, "workers": 0, "amp": "bf16",
                          "eval_interval": 15, "nonfinite": "stop"}, recipe="quickstart")
    summary = train(cfg)  # a non-finite loss would raise NonFiniteLoss
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and rows[-1]["step"] == 300
    assert not any("skipped_steps" in r for r in rows)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], "and it learns"
    assert summary["top1"] > 20.0
