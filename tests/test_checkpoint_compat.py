"""Checkpoints written before the one-engine redesign (#15) by ``mambaout train``, ``detect train`` and
``segment train`` still load, evaluate to the numbers they gave then, and resume. The fixtures are small
``last.pt`` files in tests/fixtures/compat, written by tests/fixtures/make_compat_checkpoints.py."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compat_data import COMMANDS, make_data

from mambaout.models import read_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "compat"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("compat"))


def run(argv, **fmt):
    return subprocess.run([sys.executable, "-m", "mambaout", *(a.format(**fmt) for a in argv)], capture_output=True,
                          text=True, timeout=600)


# Another CPU may round a few logits differently: one of the 20 digits may change its top-1 or top-5 answer, and
# a few pixels their class; counts are exact.
TOLERANCE = {"top1": 5.0, "top5": 5.0, "loss": 1e-3}


def close(got, want, path=""):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, float) or isinstance(got, float):
        assert got == pytest.approx(want, abs=TOLERANCE.get(path.lstrip("."), 2e-3), nan_ok=True), path
    else:
        assert got == want, path


@pytest.mark.slow
@pytest.mark.parametrize("task", list(COMMANDS))
def test_old_checkpoint_evaluates_to_its_numbers_and_resumes(task, data, tmp_path):
    spec, fixture = COMMANDS[task], FIXTURES / f"{task}_last.pt"
    r = run([*spec["eval"], "--output", str(tmp_path / "eval.json")], data=data, ckpt=fixture)
    assert r.returncode == 0, r.stderr[-2000:]
    close({k: v for k, v in json.loads((tmp_path / "eval.json").read_text()).items() if k in spec["keys"]},
          MANIFEST[task])
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(fixture, out / "last.pt")
    r = run([*spec["resume"], "--resume", str(out / "last.pt")], data=data, out=out)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = read_checkpoint(fixture), read_checkpoint(out / "last.pt")
    position = "epoch" if task == "classify" else "iter"
    assert after[position] > before[position]
    assert after["model"].keys() == before["model"].keys()
