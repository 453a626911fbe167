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
