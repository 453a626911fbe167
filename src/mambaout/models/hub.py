"""Fetch published weights into a local cache, verified by SHA-256.

Official release files come from their URL; timm's weights from the Hugging Face hub (``model.safetensors``).
A file is downloaded to a temporary name and renamed only once complete and verified, so an interrupted
download never leaves a file that looks valid. Where the table pins no digest, the digest of the first download
is recorded beside the file and every later use is checked against it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .zoo import Variant


class DownloadError(RuntimeError):
    """Weights could not be fetched (offline, moved, or corrupt in transit)."""


def cache_dir() -> Path:
    """``$MAMBAOUT_CACHE``, else ``$XDG_CACHE_HOME/mambaout``, else ``~/.cache/mambaout``."""
    env = os.environ.get("MAMBAOUT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mambaout"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, expected: str | None, url: str) -> None:
    record = path.with_name(path.name + ".sha256")
    actual = sha256_of(path)
    if expected is None and record.is_file():
        expected = record.read_text().split()[0]
    if expected is not None and actual != expected:
        raise DownloadError(
            f"checksum mismatch for {path} (from {url}): sha256 {actual}, expected {expected}. "
            f"Delete the file to download it again."
        )
    if not record.is_file():
        record.write_text(f"{actual}  {path.name}\n")


def download_url(url: str, dest: Path, sha256: str | None = None, progress: bool = True, timeout: float = 30.0):
    """Download ``url`` to ``dest`` (skipped when already cached) and verify it; returns ``dest``."""
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = _progress(total, dest.name) if progress else None
                while block := resp.read(1 << 20):
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
                if bar is not None:
                    bar.close()
            os.replace(tmp, dest)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"could not download {url}: {reason}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    _verify(dest, sha256, url)
    return dest


def _progress(total, name):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with huggingface_hub
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False)


def hf_url(repo_id: str, filename: str = "model.safetensors") -> str:
    return f"https://huggingface.co/{repo_id}/resolve/main/{filename}"


def fetch_pretrained(variant: Variant, progress: bool = True) -> Path:
    """Local path of ``variant``'s published weights, downloading them on first use."""
    w = variant.weights
    if w is None or not (w.url or w.hf_hub_id):
        raise DownloadError(f"{variant.name} has no published weights; pass checkpoint_path=... instead")
    if w.url:
        url = w.url
        dest = cache_dir() / variant.name / Path(url).name
    else:
        url = hf_url(w.hf_hub_id)
        dest = cache_dir() / variant.name / (w.hf_hub_id.replace("/", "--") + ".safetensors")
    try:
        return download_url(url, dest, w.sha256, progress=progress)
    except DownloadError as e:
        raise DownloadError(
            f"{e}. If this machine is offline, download {url} elsewhere and pass "
            f"checkpoint_path=FILE (CLI: --checkpoint FILE)"
        ) from None
