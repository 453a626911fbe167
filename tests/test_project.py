"""The project's own promises: CI runs exactly the README's test command, with the pinned test dependencies."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_command(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    after = text[text.index(heading):]
    return re.search(r"```bash\n(.+?)\n```", after, re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_command("**Tests**")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
    assert "-c constraints.txt" in command and "tests/fetch_timm_tests.py" in command and "ruff check" in command


def test_the_main_job_installs_with_the_same_pins():
    assert "-c constraints.txt" in _readme_command("**Main job: the quickstart.**")


def test_constraints_pin_every_tool_the_tests_use():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for name in ("timm", "huggingface_hub", "safetensors", "pytest", "pytest-timeout", "hypothesis", "ruff",
                 "fvcore", "ptflops", "torchinfo", "peft", "grad-cam", "gradio", "onnxruntime", "pycocotools",
                 "webdataset", "datasets"):
        assert name in pins, name
    assert "torch" not in pins and "torchvision" not in pins  # pinned by the commands, installed from local files
