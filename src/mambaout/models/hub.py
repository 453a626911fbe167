"""Fetch published weights, and never leave a file in the cache that looks valid but is not.

Two sources:

* **timm's weights on the Hugging Face hub** (the ``*_rw`` series) through ``huggingface_hub.hf_hub_download``,
  into huggingface_hub's standard cache: a file timm (or any other tool) already downloaded is reused, and the
  hub's ETags, resumption and atomic writes apply. ``HF_ENDPOINT`` (huggingface_hub's own variable) points it
  at a mirror; ``HF_HUB_CACHE``/``HF_HOME`` move the cache.
* **The official release files** (the five paper models) by a verified download into ``$MAMBAOUT_CACHE``:
  the body streams into ``FILE.part``; it is complete only when the bytes received equal the length the
  server announced, and a torch checkpoint archive must also pass its zip integrity check (a server that
  announces too short a length still delivers a cut-off archive); only then is it renamed into place. An
  interrupted download keeps its ``.part`` and the next attempt resumes it with an HTTP Range request. The
  SHA-256 is checked against the pinned digest where the variant table has one; otherwise it is recorded beside
  the file after a complete download and checked on every later use. ``MAMBAOUT_RELEASE_URL`` replaces the
  official release location (a base URL; the file names stay) for a mirror.

Every failure raises :class:`DownloadError` with one line saying what happened and what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .zoo import OFFICIAL_RELEASE, Variant, Weights


class DownloadError(RuntimeError):
    """Weights could not be fetched (offline, moved, cut short, or corrupt)."""


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


def release_url(url: str) -> str:
    """``url`` with the official release location replaced by ``$MAMBAOUT_RELEASE_URL`` when that is set."""
    mirror = os.environ.get("MAMBAOUT_RELEASE_URL")
    if mirror and url.startswith(OFFICIAL_RELEASE + "/"):
        return mirror.rstrip("/") + url[len(OFFICIAL_RELEASE):]
    return url


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_cached(path: Path, expected: str | None) -> None:
    """A cached file must still have its digest (pinned, else recorded); a file that does not is removed."""
    record = _record(path)
    if expected is None and record.is_file():
        expected = record.read_text().split()[0]
    actual = sha256_of(path)
    if expected is None:  # placed there by hand: trust it from now on
        record.write_text(f"{actual}  {path.name}\n")
        return
    if actual != expected:
        path.unlink()
        raise DownloadError(f"cached {path} has sha256 {actual[:16]}…, expected {expected[:16]}…; the file was "
                            "removed, run the command again to download it afresh")


def _content_range_total(value: str | None, start: int) -> int | None:
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", (value or "").strip())
    if not m or int(m.group(1)) != start:
        return None
    return int(m.group(2))


def _stream(url: str, part: Path, timeout: float, progress: bool) -> tuple[int, int | None]:
    """Append ``url``'s body to ``part`` (resuming from its size); returns (bytes in part, announced total)."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is not a prefix of what the server has: start over
            part.unlink()
            return _stream(url, part, timeout, progress)
        raise
    with resp:
        total = None
        if have and resp.status == 206:
            total = _content_range_total(resp.headers.get("Content-Range"), have)
        if total is None:  # a full body (the server ignored the range, or there was none)
            have, length = 0, resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        bar = _progress(total, part.name[: -len(".part")], have) if progress else None
        with open(part, "ab" if have else "wb") as out:
            while block := resp.read(1 << 20):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
        if bar is not None:
            bar.close()
    return part.stat().st_size, total


def _archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole torch checkpoint archive (torch.save's zip format), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"it is not a whole checkpoint archive ({e})"
    return None if bad is None else f"its member {bad} is corrupt"


@contextlib.contextmanager
def _exclusive(lock: Path):
    """One download of a file at a time (several processes of a torchrun job may ask for it together)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the .part file is still never renamed unless complete
        yield
        return
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def download_url(url: str, dest: Path, sha256: str | None = None, progress: bool = True,
                 timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` with the checks of the module docstring (skipped when cached); returns it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.with_name(dest.name + ".lock")):
        if dest.is_file():
            _check_cached(dest, sha256)
            return dest
        part = dest.with_name(dest.name + ".part")
        try:
            received, total = _stream(url, part, timeout, progress)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            got = part.stat().st_size if part.is_file() else 0
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            if not got:
                raise DownloadError(f"could not download {url}: {reason}") from None
            raise DownloadError(f"the download of {url} broke off after {got:,} bytes ({reason}); run the "
                                "command again to resume it") from None
        if total is None and sha256 is None:
            part.unlink()
            raise DownloadError(f"{url} was served without a Content-Length, so the download cannot be checked "
                                "for completeness; use a server that sends one, or pass checkpoint_path=FILE")
        if total is not None and received != total:
            if received > total:
                part.unlink()
                raise DownloadError(f"{url} sent {received:,} bytes where it announced {total:,}; the partial file "
                                    "was removed, run the command again")
            raise DownloadError(f"the download of {url} stopped at {received:,} of {total:,} bytes; run the "
                                "command again to resume it")
        problem = _archive_problem(part) if dest.suffix in (".pth", ".pt") else None
        actual = sha256_of(part)
        if problem is None and sha256 is not None and actual != sha256:
            problem = f"its sha256 is {actual[:16]}…, expected the pinned {sha256[:16]}…"
        if problem is not None:
            part.unlink()
            raise DownloadError(f"the file downloaded from {url} is unusable: {problem}; it was removed, run the "
                                "command again (a mirror set with MAMBAOUT_RELEASE_URL may serve another file)")
        _record(dest).write_text(f"{actual}  {dest.name}\n")
        os.replace(part, dest)
    return dest


def _progress(total, name, initial=0):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with huggingface_hub
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, leave=False)


def _hf_cache_dir() -> str | None:
    # huggingface_hub reads these when it is imported; read them per call so that a later change counts too.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hub_download(repo_id: str, filename: str = "model.safetensors", revision: str | None = None) -> Path:
    """``filename`` of the hub repository ``repo_id`` (at ``revision``: a branch, tag or commit; default the main
    branch) through huggingface_hub (its cache, ``HF_ENDPOINT``)."""
    from huggingface_hub import hf_hub_download

    endpoint = (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint,
                                    cache_dir=_hf_cache_dir()))
    except Exception as e:  # huggingface_hub raises its own errors, httpx's and OSError; all end the same way
        where = endpoint or "https://huggingface.co"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(f"could not fetch {filename} of {repo_id} from {where}: {type(e).__name__}: {first}")\
            from None


def fetch_pretrained(variant: Variant, weights: Weights | None = None, progress: bool = True) -> Path:
    """Local path of ``variant``'s published weights (``weights``: those of another tag), downloading them on
    first use."""
    w = weights or variant.weights
    if w is None or not (w.url or w.hf_hub_id):
        raise DownloadError(f"{variant.name} has no published weights; pass checkpoint_path=... instead")
    if not w.url:
        try:
            return hub_download(w.hf_hub_id)
        except DownloadError as e:
            raise DownloadError(f"{e}. If this machine is offline, set HF_ENDPOINT to a mirror, or download "
                                f"timm's {w.hf_hub_id} elsewhere and pass checkpoint_path=FILE (CLI: --checkpoint "
                                "FILE)") from None
    url = release_url(w.url)
    try:
        return download_url(url, cache_dir() / variant.name / Path(w.url).name, w.sha256, progress=progress)
    except DownloadError as e:
        raise DownloadError(f"{e}. If this machine is offline, set MAMBAOUT_RELEASE_URL to a mirror, or download "
                            f"{url} elsewhere and pass checkpoint_path=FILE (CLI: --checkpoint FILE)") from None
