"""The web demo under load and under hostile requests: a real ``mambaout demo`` server answers 50 concurrent
predictions correctly with bounded memory, turns non-images into an error message and keeps serving, listens on
127.0.0.1 only, and serves no file outside its own."""
import concurrent.futures
import http.client
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, start_demo, stop_process
from PIL import Image

from mambaout import create_model

CLASSES = [f"digit {i}" for i in range(10)]
TOPK = 5  # the demo's label shows the top five
BURST = 50


def write_images(folder: Path) -> list[Path]:
    """scikit-image's photographs (RGB and one greyscale) and scikit-learn's handwritten digits, as PNG files."""
    from skimage import data
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True)
    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        paths.append(folder / f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(paths[-1])
    digits = load_digits()
    for i in range(5):
        pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
        paths.append(folder / f"digit{i}_{digits.target[i]}.png")
        Image.fromarray(pixels, mode="L").resize((64, 64), Image.BICUBIC).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mambaout.infer.predict import Predictor, load_image

    root = tmp_path_factory.mktemp("demo-load")
    torch.manual_seed(5)
    model = create_model("mambaout_test", num_classes=len(CLASSES))
    with torch.no_grad():  # a peaked head: no near-ties, so a mixed-up or mis-processed answer shows
        model.head.fc.weight.normal_(0, 1.0)
    ckpt = root / "digits.pt"
    torch.save({"model": model.state_dict(), "model_name": "mambaout_test",
                "pretrained_cfg": {**model.pretrained_cfg, "input_size": [3, 64, 64], "label_names": CLASSES}}, ckpt)
    images = write_images(root / "images")
    predictor = Predictor(checkpoint=ckpt)
    expected = {p.name: predictor.predict([load_image(p)], topk=TOPK)[0] for p in images}
    # Distinct answers per image, so a response delivered to the wrong request cannot pass.
    assert len({tuple(round(t["prob"], 4) for t in top) for top in expected.values()}) == len(images)
    return root, ckpt, images, expected


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


@pytest.fixture(scope="module")
def server(setup):
    root, ckpt, _, _ = setup
    work = root / "server-cwd"
    work.mkdir()
    (work / "secret.txt").write_text("the server's own working folder")
    uploads = root / "gradio-tmp"
    env = dict(os.environ, GRADIO_TEMP_DIR=str(uploads), MAMBAOUT_CACHE=str(root / "cache"),
               GRADIO_ANALYTICS_ENABLED="False")
    log = root / "demo.log"
    # No --host: the default binding is what is under test.
    proc, port = start_demo(["--checkpoint", ckpt], log, env=env, cwd=work)
    base = f"http://127.0.0.1:{port}/"
    yield {"base": base, "port": port, "proc": proc, "log": log, "cwd": work, "uploads": uploads}
    stop_process(proc)


def call_predict(client, base: str, path: Path) -> tuple[str, object]:
    """The documented HTTP API: upload the file, start /predict, read its event stream to the end."""
    with open(path, "rb") as f:
        r = client.post(base + "gradio_api/upload", files={"files": (path.name, f, "application/octet-stream")})
    r.raise_for_status()
    server_path = r.json()[0]
    r = client.post(base + "gradio_api/call/predict",
                    json={"data": [{"path": server_path, "meta": {"_type": "gradio.FileData"}}]})
    r.raise_for_status()
    r = client.get(base + f"gradio_api/call/predict/{r.json()['event_id']}")
    r.raise_for_status()
    event, data = None, None
    for line in r.text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = json.loads(line.split(":", 1)[1])
    return event, data


def check_answer(event, data, expected_top):
    assert event == "complete", data
    label = data[0]
    assert label["label"] == expected_top[0]["label"]
    got = [(c["label"], c["confidence"]) for c in label["confidences"]]
    assert [g[0] for g in got] == [t["label"] for t in expected_top]
    assert np.allclose([g[1] for g in got], [t["prob"] for t in expected_top], atol=1e-4)


def burst(base, images, expected, n=BURST):
    import httpx

    jobs = [images[i % len(images)] for i in range(n)]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    with httpx.Client(timeout=120, limits=limits) as client, \
            concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda p: (p, call_predict(client, base, p)), jobs))
    for path, (event, data) in results:
        check_answer(event, data, expected[path.name])
    return len(results)


@pytest.mark.slow
def test_concurrent_bursts_are_correct_and_memory_stays_bounded(setup, server):
    import httpx

    _, _, images, expected = setup
    pid = server["proc"].pid
    with httpx.Client(timeout=120) as client:
        for p in images:  # warm-up, and every image right when asked alone
            check_answer(*call_predict(client, server["base"], p), expected[p.name])
    before = rss_kib(pid)
    t0 = time.perf_counter()
    assert burst(server["base"], images, expected) == BURST
    first_burst_s = time.perf_counter() - t0
    after_first = rss_kib(pid)
    assert burst(server["base"], images, expected) == BURST
    after_second = rss_kib(pid)
    assert server["proc"].poll() is None
    assert after_first < before + 1024 * 1024, (before, after_first)
    assert after_second < after_first * 1.2, (after_first, after_second)
    assert first_burst_s < 90, first_burst_s


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"just some text, not a picture\n", np.random.default_rng(0).bytes(4096),
                                     b"\x89PNG\r\n\x1a\n" + b"\x00" * 64], ids=["text", "random", "truncated-png"])
def test_a_non_image_gets_an_error_and_the_server_keeps_serving(content, setup, server, tmp_path):
    import httpx

    _, _, images, expected = setup
    bad = tmp_path / "upload.png"
    bad.write_bytes(content)
    with httpx.Client(timeout=120) as client:
        event, data = call_predict(client, server["base"], bad)
        assert event == "error"
        assert "not a usable image" in data["error"]
        assert str(server["uploads"]) not in data["error"]  # no server paths in what the visitor sees
        assert server["proc"].poll() is None
        check_answer(*call_predict(client, server["base"], images[0]), expected[images[0].name])


@pytest.mark.slow
def test_an_oversized_upload_is_refused(setup, server, tmp_path):
    import httpx

    from mambaout.infer.demo import MAX_UPLOAD

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (int(MAX_UPLOAD.removesuffix("mb")) * 1024 * 1024 + 1))
    with httpx.Client(timeout=120) as client, open(big, "rb") as f:
        r = client.post(server["base"] + "gradio_api/upload", files={"files": (big.name, f)})
    assert r.status_code == 413
    assert server["proc"].poll() is None


def listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as the kernel lists them) of sockets listening on ``port``, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


@pytest.mark.slow
def test_listens_on_loopback_only_by_default(server):
    assert listening_addresses(server["port"]) == ["0100007F"]  # 127.0.0.1, and no IPv6 or wildcard socket


def test_loopback_is_the_default_everywhere(monkeypatch):
    # the address the API hands gradio when no host is given, and the one the CLI hands the API
    import gradio

    from mambaout import demo
    from mambaout.cli import main

    seen = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kw: seen.append(kw["server_name"]))
    monkeypatch.setattr(demo.PredictorPool, "get", lambda self, choice: None)  # no model needed to bind
    monkeypatch.setattr(demo, "build_demo", lambda pool, examples=None, cam=False: gradio.Blocks())
    demo.launch(["mambaout_test"], None, port=free_port(), block=False)
    assert main(["demo", "--model", "mambaout_test", "--port", str(free_port())]) == 0
    assert seen == ["127.0.0.1", "127.0.0.1"]


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    # http.client sends the path exactly as written: no client-side clean-up of '..' or of encoded slashes.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_serves_no_file_outside_its_own(setup, server):
    import httpx

    _, ckpt, images, _ = setup
    port, cwd, uploads = server["port"], server["cwd"], server["uploads"]
    outside = uploads.parent / "outside.txt"
    outside.write_text("next to the upload folder")
    # The control: a file this server stored itself is served, so the refusals below are refusals.
    with httpx.Client(timeout=60) as client, open(images[0], "rb") as f:
        stored = client.post(server["base"] + "gradio_api/upload", files={"files": (images[0].name, f)}).json()[0]
    status, body = raw_get(port, f"/gradio_api/file={stored}")
    assert status == 200 and body == images[0].read_bytes()

    secrets = {"root:x:0:0", "the server's own working folder", "next to the upload folder"}
    paths = [
        "/file=/etc/passwd", "/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../../../etc/passwd",
        "/gradio_api/file=%2Fetc%2Fpasswd", "/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/gradio_api/file=/proc/self/environ", "/static/../../../../../etc/passwd",
        "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd", "/gradio_api/file=secret.txt",
        f"/gradio_api/file={cwd / 'secret.txt'}", f"/gradio_api/file={ckpt}",
        f"/gradio_api/file={uploads}/../outside.txt", f"/gradio_api/file={uploads}/%2e%2e/outside.txt",
        f"/gradio_api/file={Path(stored).parent}/../../outside.txt",
    ]
    for path in paths:
        status, body = raw_get(port, path)
        assert 400 <= status < 500, (path, status)
        assert not any(s.encode() in body for s in secrets), path
        assert ckpt.read_bytes()[:64] not in body, path
    assert server["proc"].poll() is None


def test_building_the_app_writes_nothing_into_the_package(tmp_path):
    import mambaout
    from mambaout.infer.demo import PredictorPool, build_demo

    package = Path(mambaout.__file__).parent
    before = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    build_demo(PredictorPool({"m": {"model_name": "mambaout_test"}}), examples=None)
    build_demo(PredictorPool({"m": {"model_name": "mambaout_test"}}), examples=None, cam=True)
    after = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    assert after == before
