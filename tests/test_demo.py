"""The web demo: started as a user would, driven in a real headless Chromium, and called as an API."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import start_demo, stop_process
from PIL import Image
from skimage import data

from mambaout import create_model

CLASSES = ["cat", "dog", "rocket", "coffee"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(3)
    model = create_model("mambaout_test", num_classes=len(CLASSES))
    with torch.no_grad():  # a peaked head, so the top-1 is no near-tie between classes
        model.head.fc.weight.normal_(0, 1.0)
    ckpt = root / "small.pt"
    torch.save({"model": model.state_dict(), "model_name": "mambaout_test", "class_names": CLASSES,
                "pretrained_cfg": {**model.pretrained_cfg, "input_size": [3, 64, 64], "label_names": CLASSES}},
               ckpt)
    image = root / "astronaut.png"
    Image.fromarray(data.astronaut()).save(image)
    r = subprocess.run([sys.executable, "-m", "mambaout", "predict", str(image), "--checkpoint", str(ckpt), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    expected = json.loads(r.stdout)["topk"][0]["label"]
    return ckpt, image, expected


@pytest.fixture(scope="module")
def server(setup, tmp_path_factory):
    ckpt, _, _ = setup
    log = tmp_path_factory.mktemp("log") / "demo.log"
    proc, port = start_demo(["--checkpoint", ckpt, "--cam"], log)
    yield f"http://127.0.0.1:{port}/", log
    stop_process(proc)


def test_import_starts_nothing():
    code = "import sys, mambaout, mambaout.infer.demo, mambaout.cli; print('gradio' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr


@pytest.mark.slow
def test_browser_upload_shows_the_predicted_label(setup, server, tmp_path):
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("Debian's chromium is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    _, image, expected = setup
    url, _ = server
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded")
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.get_by_role("button", name="Classify").click()
            top = page.locator('#prediction [data-testid="label-output-value"]')
            top.get_by_text(expected, exact=True).wait_for(timeout=60_000)
            heat = page.locator("#heatmap img")
            heat.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            heat_size = heat.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            shown = top.inner_text()
            timing = page.locator("#timing").inner_text()
        finally:
            browser.close()
    assert shown.strip() == expected, shown
    assert "ms" in timing and "mambaout_test" in timing
    assert heat_size == [64, 64], "the heatmap is the model's 64² input crop"


@pytest.mark.slow
def test_api_endpoint_predict(setup, server):
    from gradio_client import Client, handle_file

    _, image, expected = setup
    url, log = server
    client = Client(url, verbose=False)
    result = client.predict(handle_file(str(image)), api_name="/predict")
    assert result["label"] == expected
    assert {c["label"] for c in result["confidences"]} <= set(CLASSES)
    assert "127.0.0.1" in log.read_text()
