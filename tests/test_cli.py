"""The command line: list, info, env, and one clear line for bad arguments."""
import json
import subprocess
import sys

import pytest
from conftest import cli_in_process

from mambaout.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "mambaout", *args], capture_output=True, text=True, timeout=300)


def test_list_table_and_json(capsys):
    assert main(["list", "mambaout_*o"]) == 0  # femto, kobe
    out = capsys.readouterr().out
    assert "mambaout_femto" in out and "7.30M" in out and "78.9" in out and "official release" in out
    assert main(["list", "--format", "json", "mambaout_tiny"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["params"] == 26_545_096 and row["gmacs"] == 4.49 and row["top1_paper"] == 82.7


def test_info_json_at_size(capsys):
    assert main(["info", "mambaout_femto", "--img-size", "256", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 7_304_536
    assert info["features"][0] == {"stage": 0, "channels": 48, "stride": 4, "size": [64, 64]}
    assert info["gmacs"] > 1.16 * (256 / 224) ** 2 * 0.98
    assert info["pretrained_cfg"]["interpolation"] == "bicubic"


def test_env(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] and info["timm"] and info["mambaout"]


@pytest.mark.parametrize("args,needle", [
    (["info", "mambaout_huge"], "unknown model 'mambaout_huge'"),
    (["info", "mambaout_tiny", "--img-size", "abc"], "expected a positive whole number"),
    (["list", "nothing_*"], "no model matches"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(args, needle, capsys):
    code, _, err = cli_in_process(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_a_real_process_exits_2_with_one_line():
    r = run("info", "mambaout_huge")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'mambaout_huge'" in lines[0] and "Traceback" not in r.stderr


def test_every_subcommand_has_help(capsys):
    # in-process (a process per command only re-imports torch); the real entry point is run just above
    from mambaout.cli import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0, name
        assert "usage: mambaout " + name in capsys.readouterr().out, name
    r = run("--help")
    assert r.returncode == 0 and all(name in r.stdout for name in COMMANDS)
