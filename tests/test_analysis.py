"""The long-sequence analysis (Eq. 6, r_L, tau) and its command-line pieces."""
import argparse
import json

import pytest

from mambaout import analysis as A
from mambaout.cli import lab as CLI


def _parser():
    p = argparse.ArgumentParser(prog="mambaout analyze")
    CLI.add_analyze_args(p)
    return p


def test_token_counts_of_the_three_tasks():
    assert A.tokens(224, 224, 16) == 196
    assert A.tokens(800, 1280, 16) == 4000
    assert A.tokens(512, 2048, 16) == 4096
    assert A.tokens(225, 224, 16) == 15 * 14  # a partial patch still makes a token
    assert {t: A.tokens(*hw) for t, hw in A.TASKS.items()} == {"imagenet": 196, "coco": 4000, "ade20k": 4096}
    with pytest.raises(ValueError):
        A.tokens(0, 224)


def test_thresholds():
    assert A.TAU_SMALL == A.threshold(384) == 2304
    assert A.TAU_BASE == A.threshold(768) == 4608
    assert A.long_sequence_ratio(2304, 384) == 1.0 and not A.is_long_sequence(2304, 384)
    assert A.is_long_sequence(2305, 384)


def test_block_flops_is_eq_6():
    f = A.block_flops(196, 384)
    assert f["linear"] == 24 * 384**2 * 196 and f["attention"] == 4 * 384 * 196**2
    assert f["total"] == f["linear"] + f["attention"]
    assert f["linear_share"] + f["attention_share"] == pytest.approx(1.0)
    # r_L is the attention-to-linear FLOPs ratio, so the two halves are equal exactly at L = 6D.
    for n, d in ((196, 384), (4000, 768), (4096, 384)):
        g = A.block_flops(n, d)
        assert g["attention"] / g["linear"] == pytest.approx(A.long_sequence_ratio(n, d))
    assert A.block_flops(2304, 384)["attention_share"] == 0.5


@pytest.mark.parametrize("task,small,base", [
    ("imagenet", False, False),
    ("coco", True, False),  # 4000 > 2304 but 4000 < 4608
    ("ade20k", True, False),  # 4096 > 2304 but 4096 < 4608
])
def test_verdicts(task, small, base):
    r = A.analyze(task=task, model=None)
    verdict = {row["name"]: row["long_sequence"] for row in r["vit"]}
    assert verdict == {"ViT-S": small, "ViT-B": base}
    assert r["tokens"] == A.tokens(*A.TASKS[task]) and r["img_size"] == list(A.TASKS[task])
    assert r["stages"] == []


def test_ratios_of_the_paper():
    r = {row["name"]: row["r_L"] for row in A.analyze(task="coco", model=None)["vit"]}
    assert r == {"ViT-S": pytest.approx(4000 / 2304), "ViT-B": pytest.approx(4000 / 4608)}
    r = {row["name"]: row["r_L"] for row in A.analyze(224, model=None)["vit"]}
    assert r["ViT-S"] == pytest.approx(196 / 2304) and r["ViT-S"] < 0.1


def test_stages_of_mambaout_tiny_on_coco():
    rows = A.analyze(task="coco")["stages"]
    assert [(r["stride"], r["dim"]) for r in rows] == [(4, 96), (8, 192), (16, 384), (32, 576)]
    assert [r["size"] for r in rows] == [[200, 320], [100, 160], [50, 80], [25, 40]]
    assert [r["tokens"] for r in rows] == [64000, 16000, 4000, 1000]
    assert [r["long_sequence"] for r in rows] == [True, True, True, False]
    assert rows[2]["r_L"] == pytest.approx(4000 / 2304)
    # Odd sizes: a stride-2 conv with padding 1 rounds each side up.
    assert A.stage_rows(225, 97, [(4, 96)])[0]["size"] == [57, 25]
    # A ViT has one level: all its blocks share stride and width.
    assert A.model_stages("vit_small") == [(16, 384)]


def test_extra_dim_row():
    names = [r["name"] for r in A.analyze(task="ade20k", dim=512, model=None)["vit"]]
    assert names == ["ViT-S", "ViT-B", "D=512"]
    assert len(A.analyze(dim=384, model=None)["vit"]) == 2


def test_cli_json(capsys):
    args = _parser().parse_args(["--task", "coco", "--json"])
    assert CLI.cmd_analyze(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 4000 and out["task"] == "coco" and out["img_size"] == [800, 1280]
    assert out["thresholds"] == {"tau_small": 2304, "tau_base": 4608}
    assert {r["name"]: r["long_sequence"] for r in out["vit"]} == {"ViT-S": True, "ViT-B": False}
    assert out["model"] == "mambaout_tiny" and len(out["stages"]) == 4


def test_cli_text_and_sizes(capsys):
    p = _parser()
    assert CLI.cmd_analyze(p.parse_args([])) == 0
    text = capsys.readouterr().out
    assert "196 tokens" in text and "2304" in text and "4608" in text and "mambaout_tiny" in text
    assert CLI.cmd_analyze(p.parse_args(["--img-size", "512", "2048", "--patch-size", "32", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 16 * 64
    assert CLI.cmd_analyze(p.parse_args(["--img-size", "320", "--json", "--model", "vit_tiny"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 400 and out["stages"][0]["dim"] == 192
    with pytest.raises(ValueError, match="not both"):
        CLI.cmd_analyze(p.parse_args(["--img-size", "320", "--task", "coco"]))
    with pytest.raises(ValueError, match="--img-size"):
        CLI.cmd_analyze(p.parse_args(["--img-size", "1", "2", "3"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--task", "kitti"])
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "nope"])


def test_cli_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sub" / "ratio.png"
    assert CLI.cmd_analyze(_parser().parse_args(["--task", "ade20k", "--plot", str(out), "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize("task, tokens, long", [("imagenet", 196, False), ("coco", 4000, True), ("ade20k", 4096, True)])
def test_task_verdicts_are_the_papers_with_the_rule_printed(task, tokens, long, capsys):
    from mambaout.cli import main

    result = A.analyze(task=task)
    assert result["verdict"]["tokens"] == tokens and result["verdict"]["long_sequence"] is long
    # The per-width tables stay strict: at ViT-B's width neither COCO nor ADE20K passes L > 6D.
    assert [r["long_sequence"] for r in result["vit"]] == [long, False]
    assert main(["analyze", "--task", task]) == 0
    out = capsys.readouterr().out
    assert f"Verdict: {'long' if long else 'short'}-sequence task (L = {tokens}" in out and "rule: " in out
    assert main(["analyze", "--task", task, "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)["verdict"]
    assert verdict["long_sequence"] is long and "tau_small = 2304" in verdict["rule"]
