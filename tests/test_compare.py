"""compare: two token mixers trained with the same recipe and seed produce a table and a plot."""
import csv
import json

import pytest
from conftest import digits_subset

from mambaout.lab.compare import compare, markdown_table


@pytest.fixture(scope="module")
def tiny_digits(digits, tmp_path_factory):
    return digits_subset(digits, tmp_path_factory.mktemp("tiny"), 12, 3)


@pytest.mark.slow
def test_compare_two_mixers_writes_table_and_plot(tiny_digits, tmp_path):
    models = ["mambaout_test", "mambaout_test_ssm"]
    rows = compare(models, tiny_digits, tmp_path, epochs=2, overrides={"workers": 0, "batch_size": 16},
                   bench_batch=4)
    assert [r["model"] for r in rows] == models
    assert [r["token_mixer"] for r in rows] == ["conv", "ssm"] and rows[1]["scan"] == "1d"
    assert rows[1]["params"] > rows[0]["params"] and rows[1]["gmacs"] > rows[0]["gmacs"]
    for r in rows:
        assert 0 <= r["top1"] <= 100 and r["images_per_sec"] > 0 and r["epochs"] == 2
        assert (tmp_path / r["model"] / "last.pt").is_file()
    assert json.loads((tmp_path / "compare.json").read_text()) == rows
    with open(tmp_path / "compare.csv") as f:
        assert [row["model"] for row in csv.DictReader(f)] == models
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    table = (tmp_path / "compare.md").read_text()
    assert table == markdown_table(rows) and "ssm (1d)" in table


def test_compare_cli_rejects_unknown_model(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mambaout", "compare", "--models", "mambaout_test,nope",
                        "--output", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown model 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- --task segment (Hypothesis 2)
def _colour_class(pixels):
    """The palette entry nearest to the mean colour of ``pixels``; None for the neutral grey."""
    import numpy as np

    from mambaout.lab.seg_tasks import NEUTRAL, PALETTE

    choices = [*PALETTE, NEUTRAL]
    k = int(np.argmin([np.abs(pixels.mean(0) - np.array(c)).sum() for c in choices]))
    return None if k == len(PALETTE) else k


@pytest.mark.parametrize("kind", ["local", "long_range"])
def test_segmentation_tasks_put_the_cue_where_they_say(kind):
    import numpy as np
    from scipy import ndimage

    from mambaout.lab.seg_tasks import MARKER, make_scene

    rng = np.random.default_rng(1)
    shapes = 0
    side = round(MARKER * 128)
    for _ in range(40):
        image, label = make_scene(rng, kind, 128)
        pixels = np.asarray(image).astype(float)
        marker = label == 0
        assert marker.sum() == side * side and (label >= 1).mean() > 0.85
        # the background is grey: no tint for the colour cue to drown in
        background = pixels[ndimage.binary_erosion(label == 1, iterations=2)].mean(0)
        assert np.ptp(background) < 4, background
        ys, xs = np.nonzero(marker)
        assert (ys.min() < 20 or ys.max() > 107) and (xs.min() < 20 or xs.max() > 107), "the marker is in a corner"
        inner_marker = ndimage.binary_erosion(marker, iterations=2)
        marker_class = _colour_class(pixels[inner_marker])
        regions, n = ndimage.label(label >= 2)
        for i in range(1, n + 1):
            region = regions == i
            cls = int(np.bincount(label[region]).argmax()) - 2
            own = _colour_class(pixels[ndimage.binary_erosion(region, iterations=2)])
            if kind == "local":  # the shape wears its class; the marker is grey
                assert own == cls and marker_class is None
            else:  # the shape is grey; the marker, a corner away, is every shape's class
                assert own is None and marker_class == cls
            shapes += 1
    assert shapes > 80


def test_compare_segment_cli_writes_both_tasks(tmp_path, capsys):
    from conftest import cli_in_process

    out = tmp_path / "seg"
    code, stdout, stderr = cli_in_process(
        ["compare", "--task", "segment", "--models", "mambaout_test,mambaout_test_ssm", "--iters", "4",
         "--train-images", "8", "--segment-size", "64", "--output", out], capsys)
    assert code == 0, stderr
    rows = json.loads((out / "compare.json").read_text())
    assert [(r["task"], r["model"]) for r in rows] == [
        (t, m) for t in ("local", "long_range") for m in ("mambaout_test", "mambaout_test_ssm")]
    for r in rows:
        assert 0 <= r["miou"] <= 100 and r["iters"] == 4 and r["images_per_sec"] > 0 and r["gmacs"] > 0
    assert rows[1]["token_mixer"] == "ssm" and rows[1]["params"] > rows[0]["params"]
    table = (out / "compare.md").read_text()
    assert "mIoU local" in table and "mIoU long-range" in table and table in stdout
    assert (out / "compare.png").stat().st_size > 10_000
    assert len(list((out / "data" / "long_range" / "images" / "training").iterdir())) == 8
    assert (out / "tasks.png").stat().st_size > 10_000
    code, _, stderr = cli_in_process(["compare", "--task", "segment", "--segment-tasks", "far", "--output", out],
                                     capsys)
    assert code != 0 and "far" in stderr
    # the trained segmenter's backbone is what erf measures from such a checkpoint
    code, _, stderr = cli_in_process(["erf", "--checkpoint", out / "long_range" / "mambaout_test_ssm" / "last.pt",
                                      "--img-size", "64", "--num-images", "2", "--output", out / "erf"], capsys)
    assert code == 0, stderr
    measured = json.loads((out / "erf" / "erf.json").read_text())["models"]["mambaout_test_ssm"]
    assert measured["weights"] == "checkpoint" and measured["theoretical_rf"] is None
