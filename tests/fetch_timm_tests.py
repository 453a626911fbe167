"""Fetch timm's own per-model test file (its tests/test_models.py) for the installed timm version.

The file ships in timm's source distribution on PyPI. This runs in the install step of the README's test command,
so that pytest itself needs no network and parallel test workers never download at once:

    python tests/fetch_timm_tests.py          # prints the path of the file

It writes ``<cache>/timm-tests/<timm version>/test_models.py`` (``<cache>``: ``$MAMBAOUT_CACHE`` or
``~/.cache/mambaout``) atomically, and does nothing when the file is already there.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def target() -> Path:
    import timm

    from mambaout.models.hub import cache_dir

    return cache_dir() / "timm-tests" / timm.__version__ / "test_models.py"


def fetch() -> Path:
    import timm

    path = target()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"timm=={timm.__version__}", "-d", tmp], check=True, timeout=600)
        sdist = next(Path(tmp).glob("timm-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("/tests/test_models.py"))
            part = Path(tmp) / "test_models.py"
            part.write_bytes(tar.extractfile(member).read())
        os.replace(part, path)  # whole or absent, never half-written
    return path


if __name__ == "__main__":
    print(fetch())
