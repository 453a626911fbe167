"""Data randomness that survives a stop anywhere: each sample's augmentation draws from RNGs seeded by (seed,
epoch, index), not from a stream that depends on which worker read it or how many samples came before. A run
resumed in the middle of an epoch therefore sees exactly the augmentations an uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**31)


@contextlib.contextmanager
def seeded(s: int):
    """Python, NumPy and torch (CPU) RNGs seeded by ``s`` inside the block. In the main process they are put back
    afterwards: its streams (mixup, drop path) must not depend on data loading with workers=0. A DataLoader
    worker draws from them for nothing else, so it skips saving them (NumPy's state alone costs ~60 µs a sample).

    ``torch.default_generator.manual_seed`` seeds exactly what ``torch.manual_seed`` seeds on the CPU, without
    the ~80 µs it spends queueing seeds for accelerators that data transforms never draw from."""
    from torch.utils.data import get_worker_info

    keep = get_worker_info() is None
    if keep:
        py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(s)
    np.random.seed(s)
    torch.default_generator.manual_seed(s)
    try:
        yield
    finally:
        if keep:
            random.setstate(py)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


class SeededSamples(Dataset):
    """``dataset`` whose item ``i`` in epoch ``e`` is drawn with Python, NumPy and torch RNGs seeded by
    ``(seed, e, i)``. Call ``set_epoch`` before building each epoch's DataLoader."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):  # class_names, classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        with seeded(sample_seed(self.seed, self.epoch, index)):
            return self.dataset[index]
