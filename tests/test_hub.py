"""pretrained=True: download once into the cache, verify the checksum, and fail clearly when offline."""
import dataclasses
import functools
import hashlib
import http.server
import socket
import threading

import pytest
import torch
from conftest import to_official_layout

from mambaout import DownloadError, create_model
from mambaout.models import zoo


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over tmp_path/www; yields (base_url, request_log)."""
    root = tmp_path / "www"
    root.mkdir()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, log
    httpd.shutdown()


def _with_weights(monkeypatch, name, **weights):
    variant = zoo.VARIANTS[name]
    patched = dataclasses.replace(variant, weights=dataclasses.replace(variant.weights, **weights))
    monkeypatch.setitem(zoo.VARIANTS, name, patched)


def test_download_verify_and_cache(served, timm_models, tmp_path, monkeypatch):
    base, root, log = served
    monkeypatch.setenv("MAMBAOUT_CACHE", str(tmp_path / "cache"))
    ref = timm_models("mambaout_femto")
    torch.save(to_official_layout(ref.state_dict()), root / "mambaout_femto.pth")
    digest = hashlib.sha256((root / "mambaout_femto.pth").read_bytes()).hexdigest()
    _with_weights(monkeypatch, "mambaout_femto", url=f"{base}/mambaout_femto.pth", sha256=digest)
    x = torch.randn(1, 3, 64, 64)
    model = create_model("mambaout_femto", pretrained=True).eval()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() < 1e-4
    assert (tmp_path / "cache" / "mambaout_femto" / "mambaout_femto.pth").is_file()
    create_model("mambaout_femto", pretrained=True)
    assert len(log) == 1, "second load must come from the cache"


def test_checksum_mismatch_is_an_error(served, tmp_path, monkeypatch):
    base, root, _ = served
    monkeypatch.setenv("MAMBAOUT_CACHE", str(tmp_path / "cache"))
    torch.save(create_model("mambaout_femto").state_dict(), root / "w.pth")
    _with_weights(monkeypatch, "mambaout_femto", url=f"{base}/w.pth", sha256="0" * 64)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        create_model("mambaout_femto", pretrained=True)


def test_recorded_digest_catches_a_changed_cache_file(served, tmp_path, monkeypatch):
    base, root, _ = served
    monkeypatch.setenv("MAMBAOUT_CACHE", str(tmp_path / "cache"))
    torch.save(create_model("mambaout_test").state_dict(), root / "t.pth")
    _with_weights_test = dataclasses.replace(zoo.VARIANTS["mambaout_femto"].weights, url=f"{base}/t.pth")
    monkeypatch.setitem(zoo.VARIANTS, "mambaout_test",
                        dataclasses.replace(zoo.VARIANTS["mambaout_test"], weights=_with_weights_test))
    create_model("mambaout_test", pretrained=True)
    cached = tmp_path / "cache" / "mambaout_test" / "t.pth"
    assert (cached.parent / "t.pth.sha256").is_file()
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        create_model("mambaout_test", pretrained=True)


def test_offline_error_names_url_and_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBAOUT_CACHE", str(tmp_path / "cache"))
    with socket.socket() as s:  # a port nobody listens on: connection refused, as on an offline machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mambaout_tiny.pth"
    _with_weights(monkeypatch, "mambaout_tiny", url=url)
    with pytest.raises(DownloadError) as e:
        create_model("mambaout_tiny", pretrained=True)
    assert url in str(e.value) and "checkpoint_path" in str(e.value)
    assert not any((tmp_path / "cache").rglob("*.part")), "no partial file may be left behind"


def test_weight_sources_of_the_zoo():
    v = zoo.VARIANTS
    assert v["mambaout_tiny"].weights.url.endswith("/releases/download/model/mambaout_tiny.pth")
    assert v["mambaout_base_plus_rw"].weights.hf_hub_id == "timm/mambaout_base_plus_rw.sw_e150_in12k_ft_in1k"
    with pytest.raises(DownloadError, match="no published weights"):
        create_model("mambaout_test", pretrained=True)
