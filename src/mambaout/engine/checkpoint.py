"""Training checkpoints: plain data only, written atomically.

A checkpoint holds tensors, numbers, strings and lists/dicts of them, so it loads with
``torch.load(weights_only=True)`` and rebuilds its model by itself (``model_name``, ``model_args``,
``class_names``, ``pretrained_cfg``). It is written to a temporary file in the same folder, flushed to disk and
renamed over the old one, so a crash at any moment leaves either the previous file or the new one, whole.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_SAVES: dict[str, int] = {}


class _PausingFile:
    """Test fault injection (``MAMBAOUT_FAULT_PAUSE_SAVE=NAME:N:FLAG``): the N-th save of a file named NAME stops
    for good after its first 64 KiB, once FLAG exists, so that a test can kill the process inside the write."""

    def __init__(self, f, flag: str):
        self.f, self.flag, self.written = f, flag, 0

    def write(self, data) -> int:
        n = self.f.write(data)
        self.written += n
        if self.written >= 1 << 16:
            import time

            self.f.flush()
            Path(self.flag).touch()
            while True:
                time.sleep(1)
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)


def _fault_injected(f, path: Path):
    spec = os.environ.get("MAMBAOUT_FAULT_PAUSE_SAVE")
    if not spec:
        return f
    name, nth, flag = spec.split(":", 2)
    if name != path.name:
        return f
    _SAVES[name] = _SAVES.get(name, 0) + 1
    return _PausingFile(f, flag) if _SAVES[name] == int(nth) else f


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: mkstemp's temporaries are 0600, which would leave every
    checkpoint unreadable to the rest of a group sharing a cluster folder."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed inside an earlier write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, _fault_injected(f, path))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
