"""pretrained=True: verified downloads from a loopback server that misbehaves on purpose.

The official release files come through our verified download (length, archive check, digest, resume); timm's
hub weights through huggingface_hub against a minimal stand-in for the hub's file endpoint. Every failure must
be one line, and must leave nothing in the cache that looks valid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import re
import socket
import threading

import pytest
import torch
from conftest import free_port, to_official_layout, write_small_inputs

from mambaout import DownloadError, create_model
from mambaout.cli import main
from mambaout.models import zoo

pytestmark = pytest.mark.timeout(300)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLASSES = ["cat", "dog"]


class Server:
    """A loopback HTTP server over named byte strings, each with a behaviour:

    ``ok`` (Range requests honoured), ``truncate`` (announces the length, sends 10 bytes, closes), ``short`` (a
    Content-Length half the size, and that half), ``drop`` (the first GET sends half the body, then the
    connection dies; later GETs behave), ``nolength`` (no Content-Length), ``missing`` (404). Paths under
    ``/hub/<org>/<repo>/resolve/<rev>/<file>`` answer as the Hugging Face hub's file endpoint does (HEAD with
    X-Repo-Commit and ETag, then GET)."""

    def __init__(self):
        self.files: dict[str, tuple[bytes, str]] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.dropped: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body):
                path = self.path.split("?")[0]
                hub = re.fullmatch(r"/hub/(.+)/resolve/[^/]+/(.+)", path)
                key = f"hub:{hub.group(1)}/{hub.group(2)}" if hub else path
                server.log.append((self.command, path, self.headers.get("Range")))
                if key not in server.files or server.files[key][1] == "missing":
                    self.send_error(404, "Not Found")
                    return
                data, mode = server.files[key]
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m and mode == "ok" or (m and mode == "drop" and key in server.dropped):
                    start = int(m.group(1))
                self.send_response(206 if start else 200)
                if hub:
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if mode == "short":
                    self.send_header("Content-Length", str(len(data) // 2))
                elif mode != "nolength":
                    self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                if mode == "truncate":
                    self.wfile.write(data[:10])
                elif mode == "short":
                    self.wfile.write(data[: len(data) // 2])
                elif mode == "drop" and key not in server.dropped:
                    server.dropped.add(key)
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self.wfile.write(data[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, path):
        return [r for r in self.log if r[0] == "GET" and r[1] == path]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("MAMBAOUT_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("MAMBAOUT_RELEASE_URL", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return root


def _official_bytes(model) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(to_official_layout(model.state_dict()), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def test_weights():
    torch.manual_seed(5)
    model = create_model("mambaout_test").eval()
    return model, _official_bytes(model)


def _with_weights(monkeypatch, name, **weights):
    variant = zoo.VARIANTS[name]
    base = variant.weights or zoo.Weights()
    monkeypatch.setitem(zoo.VARIANTS, name, dataclasses.replace(variant, weights=dataclasses.replace(base, **weights)))


def _serve_release(monkeypatch, server, data, mode="ok", sha256=None, name="mambaout_test"):
    """Give ``name`` an official release URL, served (through MAMBAOUT_RELEASE_URL) by ``server``."""
    server.files[f"/release/{name}.pth"] = (data, mode)
    _with_weights(monkeypatch, name, url=f"{zoo.OFFICIAL_RELEASE}/{name}.pth", hf_hub_id=None, sha256=sha256)
    monkeypatch.setenv("MAMBAOUT_RELEASE_URL", server.base + "/release")
    return f"/release/{name}.pth"


def _same_function(a, b):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


def _nothing_valid(cache_root, name="mambaout_test.pth"):
    files = [p.name for p in cache_root.rglob("*") if p.is_file()]
    assert name not in files, files


def _refused(monkeypatch, server, cache, data, mode, match, sha256=None):
    """Serve ``data`` in ``mode``: pretrained=True must fail with one line matching ``match``, and leave no
    file in the cache under the weights' name."""
    _serve_release(monkeypatch, server, data, mode=mode, sha256=sha256)
    with pytest.raises(DownloadError, match=match) as e:
        create_model("mambaout_test", pretrained=True)
    assert "\n" not in str(e.value)
    _nothing_valid(cache)
    return str(e.value)


# ------------------------------------------------------------------------------------------ release files
def test_download_is_verified_recorded_and_cached(server, cache, monkeypatch, test_weights):
    model, data = test_weights
    path = _serve_release(monkeypatch, server, data)
    _same_function(create_model("mambaout_test", pretrained=True), model)
    cached = cache / "mambaout_test" / "mambaout_test.pth"
    assert cached.read_bytes() == data
    assert (cache / "mambaout_test" / "mambaout_test.pth.sha256").read_text().split()[0] == \
        hashlib.sha256(data).hexdigest()
    create_model("mambaout_test", pretrained=True)
    assert len(server.gets(path)) == 1, "the second load comes from the cache"


def test_a_pinned_digest_is_enforced(server, cache, monkeypatch, test_weights):
    _refused(monkeypatch, server, cache, test_weights[1], "ok", r"unusable: its sha256 is .* the pinned 0000",
             sha256="0" * 64)
    assert not list(cache.rglob("*.part"))


def test_a_truncated_body_is_not_accepted_and_resumes(server, cache, monkeypatch, test_weights):
    model, data = test_weights
    path = _serve_release(monkeypatch, server, data, mode="truncate")
    with pytest.raises(DownloadError, match=rf"stopped at 10 of {len(data):,} bytes; run the command again"):
        create_model("mambaout_test", pretrained=True)
    _nothing_valid(cache)
    assert (cache / "mambaout_test" / "mambaout_test.pth.part").stat().st_size == 10
    assert not (cache / "mambaout_test" / "mambaout_test.pth.sha256").exists(), "no digest of a fragment"
    server.files[path] = (data, "ok")
    _same_function(create_model("mambaout_test", pretrained=True), model)
    assert server.gets(path)[-1][2] == "bytes=10-", "the second attempt resumes"


def test_a_connection_dropped_mid_file_resumes_with_a_range_request(server, cache, monkeypatch, test_weights):
    model, data = test_weights
    path = _serve_release(monkeypatch, server, data, mode="drop")
    with pytest.raises(DownloadError, match="run the command again to resume") as e:
        create_model("mambaout_test", pretrained=True)
    assert "MAMBAOUT_RELEASE_URL" in str(e.value) and "\n" not in str(e.value)
    _nothing_valid(cache)
    _same_function(create_model("mambaout_test", pretrained=True), model)
    assert server.gets(path)[-1][2] == f"bytes={len(data) // 2}-"
    assert (cache / "mambaout_test" / "mambaout_test.pth").read_bytes() == data


def test_a_too_short_content_length_is_caught_by_the_archive_check(server, cache, monkeypatch, test_weights):
    _refused(monkeypatch, server, cache, test_weights[1], "short", "unusable: it is not a whole checkpoint archive")
    assert not list(cache.rglob("*.sha256")) and not list(cache.rglob("*.part"))


def test_a_body_without_length_is_refused_unless_pinned(server, cache, monkeypatch, test_weights):
    model, data = test_weights
    _refused(monkeypatch, server, cache, data, "nolength", "without a Content-Length")
    _serve_release(monkeypatch, server, data, mode="nolength", sha256=hashlib.sha256(data).hexdigest())
    _same_function(create_model("mambaout_test", pretrained=True), model)


def test_404_is_one_line(server, cache, monkeypatch, test_weights):
    _refused(monkeypatch, server, cache, b"", "missing", r"HTTP 404 Not Found.*MAMBAOUT_RELEASE_URL.*checkpoint_path")


def test_a_corrupted_cached_file_is_removed_and_downloaded_again(server, cache, monkeypatch, test_weights):
    model, data = test_weights
    path = _serve_release(monkeypatch, server, data)
    create_model("mambaout_test", pretrained=True)
    cached = cache / "mambaout_test" / "mambaout_test.pth"
    cached.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(DownloadError, match="cached .* has sha256 .* the file was removed, run the command again"):
        create_model("mambaout_test", pretrained=True)
    assert not cached.exists()
    _same_function(create_model("mambaout_test", pretrained=True), model)
    assert len(server.gets(path)) == 2


def test_offline_error_names_url_mirror_and_alternative(cache, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as on an offline machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mambaout_tiny.pth"
    _with_weights(monkeypatch, "mambaout_tiny", url=url)
    with pytest.raises(DownloadError) as e:
        create_model("mambaout_tiny", pretrained=True)
    msg = str(e.value)
    assert url in msg and "checkpoint_path" in msg and "MAMBAOUT_RELEASE_URL" in msg and "\n" not in msg
    assert not any(cache.rglob("*.part")), "no partial file may be left behind"


def test_the_release_mirror_replaces_the_official_location(monkeypatch):
    from mambaout.models.hub import release_url

    url = zoo.VARIANTS["mambaout_tiny"].weights.url
    assert url == f"{zoo.OFFICIAL_RELEASE}/mambaout_tiny.pth"
    monkeypatch.delenv("MAMBAOUT_RELEASE_URL", raising=False)
    assert release_url(url) == url
    monkeypatch.setenv("MAMBAOUT_RELEASE_URL", "http://mirror.example/weights/")
    assert release_url(url) == "http://mirror.example/weights/mambaout_tiny.pth"
    assert release_url("http://elsewhere/x.pth") == "http://elsewhere/x.pth"


# ------------------------------------------------------------------------------------------------- the hub
def _serve_hub(monkeypatch, server, model, repo="timm/test_mambaout.r160_in1k", mode="ok"):
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in model.state_dict().items()})
    server.files[f"hub:{repo}/model.safetensors"] = (data, mode)
    _with_weights(monkeypatch, "mambaout_test", url=None, hf_hub_id=repo)
    monkeypatch.setenv("HF_ENDPOINT", server.base + "/hub")
    return f"/hub/{repo}/resolve/main/model.safetensors"


def test_hub_weights_come_through_huggingface_hub_and_its_cache(server, cache, monkeypatch, test_weights, tmp_path):
    model, _ = test_weights
    path = _serve_hub(monkeypatch, server, model)
    _same_function(create_model("mambaout_test", pretrained=True), model)
    snapshots = list((tmp_path / "hf").rglob("model.safetensors"))
    assert snapshots and "snapshots" in str(snapshots[0]), "huggingface_hub's cache layout"
    assert len(server.gets(path)) == 1
    server.files.clear()  # the hub goes away: the cached file still serves
    server.httpd.shutdown()
    _same_function(create_model("mambaout_test", pretrained=True), model)


def test_a_file_timm_downloaded_is_reused(server, cache, monkeypatch, test_weights, tmp_path):
    from huggingface_hub import hf_hub_download

    model, _ = test_weights
    path = _serve_hub(monkeypatch, server, model)
    # what timm.create_model(pretrained=True) calls for a hub weight (the cache as huggingface_hub resolves
    # HF_HUB_CACHE when a process starts with it set)
    hf_hub_download("timm/test_mambaout.r160_in1k", "model.safetensors", endpoint=server.base + "/hub",
                    cache_dir=str(tmp_path / "hf"))
    assert len(server.gets(path)) == 1
    _same_function(create_model("mambaout_test", pretrained=True), model)
    assert len(server.gets(path)) == 1, "not fetched again"


def test_hub_failures_are_one_line_and_name_the_way_out(server, cache, monkeypatch, test_weights):
    model, _ = test_weights
    _serve_hub(monkeypatch, server, model, mode="missing")
    with pytest.raises(DownloadError, match=r"test_mambaout\.r160_in1k.*HF_ENDPOINT.*checkpoint_path") as e:
        create_model("mambaout_test", pretrained=True)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ every --pretrained path
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained-inputs")
    write_small_inputs(root, CLASSES)
    return root


def _cli(*args):
    return main([str(a) for a in args])


PRETRAINED_COMMANDS = {
    "train": lambda d, o: ("train", "--model", "mambaout_test", "--pretrained", "--data-dir", d / "folder",
                           "--output", o, "--recipe", "quickstart", "--epochs", "1", "--warmup-epochs", "0",
                           "--batch-size", "4", "--workers", "0"),
    "eval": lambda d, o: ("eval", "--model", "mambaout_test", "--pretrained", "--data-dir", d / "folder" / "val",
                          "--output", o / "eval.json"),
    "predict": lambda d, o: ("predict", d / "folder" / "val" / "cat" / "0.png", "--model", "mambaout_test",
                             "--pretrained", "--json"),
    "export": lambda d, o: ("export", "--model", "mambaout_test", "--pretrained", "--format", "safetensors",
                            "--output", o / "m.safetensors"),
    "detect": lambda d, o: ("detect", "train", "--recipe", "detect_quickstart", "--model", "mambaout_test",
                            "--pretrained", "--data-dir", d / "coco", "--output", o, "--epochs", "1",
                            "--batch-size", "2", "--global-batch-size", "2"),
    "segment": lambda d, o: ("segment", "train", "--recipe", "segment_quickstart", "--model", "mambaout_test",
                             "--pretrained", "--data-dir", d / "ade", "--output", o, "--iters", "2",
                             "--eval-interval", "2", "--batch-size", "2", "--global-batch-size", "2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", [*PRETRAINED_COMMANDS, "demo"])
def test_every_pretrained_command_downloads_through_the_verified_path(command, server, cache, monkeypatch,
                                                                     test_weights, inputs, tmp_path):
    _, data = test_weights
    path = _serve_release(monkeypatch, server, data, mode="drop")  # each command must survive a resume, too
    if command == "demo":
        import gradio

        launched = []
        monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kw: launched.append(kw))
        argv = ("demo", "--model", "mambaout_test", "--port", str(free_port()))
    else:
        argv = PRETRAINED_COMMANDS[command](inputs, tmp_path / "out")
    assert _cli(*argv) != 0  # the dropped connection: one line and a non-zero exit
    assert _cli(*argv) == 0
    assert [r[2] for r in server.gets(path)] == [None, f"bytes={len(data) // 2}-"]
    assert (cache / "mambaout_test" / "mambaout_test.pth").read_bytes() == data
    if command == "demo":
        assert launched


def test_a_failed_download_through_the_cli_is_one_line(server, cache, monkeypatch, capsys, inputs):
    _serve_release(monkeypatch, server, b"", mode="missing")
    assert _cli("predict", inputs / "folder" / "val" / "cat" / "0.png", "--model", "mambaout_test",
                "--pretrained") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 404" in err[0] and "Traceback" not in err[0]


def test_weight_sources_of_the_zoo():
    v = zoo.VARIANTS
    assert v["mambaout_tiny"].weights.url.endswith("/releases/download/model/mambaout_tiny.pth")
    assert v["mambaout_base_plus_rw"].weights.hf_hub_id == "timm/mambaout_base_plus_rw.sw_e150_in12k_ft_in1k"
    with pytest.raises(DownloadError, match="no published weights"):
        create_model("mambaout_test", pretrained=True)
