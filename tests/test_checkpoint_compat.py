"""Checkpoints written before the one-engine redesign (#15) by ``mambaout train``, ``detect train`` and
``segment train`` still load, evaluate to the numbers they gave then, and resume, from an epoch's end
(``{task}_last.pt``) or from inside one, where SIGTERM left them (``{task}_mid.pt``, holding the old code's running
sums). The fixtures are small files in tests/fixtures/compat, written by tests/fixtures/make_compat_checkpoints.py."""
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compat_data import COMMANDS, make_data
from conftest import cli_in_process

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


@pytest.mark.slow
@pytest.mark.parametrize("task", list(COMMANDS))
def test_old_checkpoint_stopped_inside_a_chunk_resumes_with_its_running_sums(task, data, tmp_path, capsys,
                                                                             monkeypatch):
    import mambaout.engine.loop as loop

    fixture = FIXTURES / f"{task}_mid.pt"
    old = read_checkpoint(fixture)
    restored = []
    real = loop._tally_from

    def spy(partial):
        tally = real(partial)
        restored.append(copy.deepcopy(tally))  # as restored: the run goes on adding to it
        return tally

    monkeypatch.setattr(loop, "_tally_from", spy)
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(fixture, out / "last.pt")
    argv = [a.format(data=data, out=out) for a in COMMANDS[task]["train"]]
    code, stdout, err = cli_in_process([*argv, "--resume", out / "last.pt"], capsys)
    assert code == 0, err[-2000:]
    # The old names of the sums (n_loss, or n and skipped) are this engine's: the chunk's row counts the step
    # taken before the stop.
    (tally,) = restored
    before = old["partial"][0]
    assert tally["steps"] == 1 and tally["loss_sum"] == before["loss_sum"] and tally["seen"] == before["seen"]
    assert tally["parts"] == before.get("parts", {})
    after = read_checkpoint(out / "last.pt")
    if task == "classify":
        assert "resuming at epoch 1, step 2" in stdout + err
        assert (after["epoch"], after["step"], after.get("batch")) == (0, 2, None)
    else:
        assert "resuming at iteration 1" in stdout + err
        assert after["iter"] == 2 and "partial" not in after
