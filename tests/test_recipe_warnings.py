"""A dense run that will work but is probably not the one meant says so, in one line each: a paper-size backbone
from random weights, a warm-up as long as the whole run, UperNet's BatchNorm on a few images at a time."""
import subprocess
import sys

import pytest
from compat_data import SEGMENT_RECIPE
from conftest import write_small_inputs

from mambaout.dense.config import DetectConfig, SegmentConfig
from mambaout.dense.train import recipe_warnings
from mambaout.engine.config import resolve_config


def _warnings(cls, total=1000, global_batch=16, **kw):
    return recipe_warnings(resolve_config(kw, cls=cls), total, global_batch)


def test_a_paper_backbone_from_random_weights_is_named():
    (line,) = _warnings(DetectConfig, model="mambaout_tiny", warmup_iters=10)
    assert "mambaout_tiny starts from random weights" in line and "--pretrained" in line
    assert _warnings(DetectConfig, model="mambaout_tiny", warmup_iters=10, pretrained=True) == []
    assert _warnings(DetectConfig, model="mambaout_small", warmup_iters=10, checkpoint="weights.pt") == []
    assert _warnings(DetectConfig, model="mambaout_test", warmup_iters=10) == []  # not a paper backbone


@pytest.mark.parametrize("warmup, total, warned", [(1000, 500, True), (1000, 1000, True), (1000, 1001, False)])
def test_a_warm_up_as_long_as_the_run_is_named(warmup, total, warned):
    found = _warnings(DetectConfig, total=total, model="mambaout_test", warmup_iters=warmup)
    assert bool(found) is warned
    if warned:
        assert f"{warmup}-iteration warm-up" in found[0] and f"({total} iterations)" in found[0]


def test_batchnorm_on_accumulated_micro_batches_is_named():
    (line,) = _warnings(SegmentConfig, model="mambaout_test", warmup_iters=10, batch_size=2)
    assert "from 2 image(s) at a time" in line and "global batch of 16" in line
    assert _warnings(SegmentConfig, model="mambaout_test", warmup_iters=10, batch_size=8) == []
    assert _warnings(SegmentConfig, global_batch=2, model="mambaout_test", warmup_iters=10, batch_size=2) == []
    assert _warnings(DetectConfig, model="mambaout_test", warmup_iters=10, batch_size=2) == []  # no BatchNorm


@pytest.mark.slow
def test_the_command_line_prints_each_as_one_line(tmp_path):
    write_small_inputs(tmp_path, ["a", "b"])
    (tmp_path / "seg.yaml").write_text(SEGMENT_RECIPE)
    r = subprocess.run([sys.executable, "-m", "mambaout", "segment", "train", "--recipe", tmp_path / "seg.yaml",
                        "--data-dir", tmp_path / "ade", "--output", tmp_path / "out", "--batch-size", "2",
                        "--global-batch-size", "4", "--iters", "2", "--warmup-iters", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    warned = [line for line in r.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == 2 and all(line.startswith("mambaout: warning: ") for line in warned), r.stderr
    assert "warm-up is at least the whole run" in warned[0] and "BatchNorm" in warned[1]
