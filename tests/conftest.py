import os

import pytest
import torch
from hypothesis import settings

# Hypothesis: a fixed sequence of examples in CI (a red run is then reproducible, and no run turns red by chance);
# fresh random examples on a developer's machine, where finding new failures is the point.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev"))

# Two cores: keep torch from oversubscribing when pytest runs alongside other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

PAPER_MODELS = ["mambaout_femto", "mambaout_kobe", "mambaout_tiny", "mambaout_small", "mambaout_base"]


def timm_name(name: str) -> str:
    """timm registers our fast test variant under another name."""
    return "test_mambaout" if name == "mambaout_test" else name


def to_official_layout(sd: dict) -> dict:
    """Write a timm-layout state dict the way the official release files store it (the inverse mapping)."""
    import re

    out = {}
    for k, v in sd.items():
        if k.startswith("stem."):
            k = "downsample_layers.0." + k[len("stem."):]
        elif re.match(r"^stages\.\d+\.downsample\.", k):
            k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        elif re.match(r"^stages\.\d+\.blocks\.\d+\.", k):
            k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        elif k.startswith("head.norm."):
            k = k[len("head."):]
        elif k.startswith("head.pre_logits.fc."):
            k = "head.fc1." + k[len("head.pre_logits.fc."):]
        elif k.startswith("head.pre_logits.norm."):
            k = "head.norm." + k[len("head.pre_logits.norm."):]
        elif k.startswith("head.fc."):
            k = "head.fc2." + k[len("head.fc."):]
        out[k] = v
    return out


@pytest.fixture(scope="session")
def timm_models():
    """timm's reference models with seeded random weights, built once per session."""
    import timm

    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(sum(map(ord, name)))
            model = timm.create_model(timm_name(name)).eval()
            # Random non-trivial norms and biases, so a mis-mapped key cannot hide behind ones and zeros.
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if p.ndim == 1:
                        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith("weight") else 0.0))
            cache[name] = model
        return cache[name]

    return get


def write_small_inputs(root, classes):
    """A 32x32 ImageFolder (4 random images per class and split) under root/folder, and generated shapes in the
    COCO (root/coco) and ADE20K (root/ade) layouts: the smallest inputs every command accepts."""
    import numpy as np
    from PIL import Image

    from mambaout.dense.shapes import make_shapes

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / "folder" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / "folder" / split / c / f"{i}.png")
    make_shapes(root / "coco", "coco", n_train=4, n_val=2, size=(64, 64))
    make_shapes(root / "ade", "ade20k", n_train=4, n_val=2, size=(64, 64))
