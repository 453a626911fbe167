"""The data and commands behind the checkpoint-compatibility fixtures (tests/fixtures/compat): shared by the script
that wrote them and by the test that reads them, so both see the same inputs."""
from __future__ import annotations

import shutil
from pathlib import Path

# Small heads, so that each checkpoint (weights and AdamW state) stays small.
DETECT_RECIPE = ("model: mambaout_test\nmin_size: 64\nmax_size: 64\nanchor_sizes: [8, 16, 32, 64, 128]\n"
                 "rpn_train_proposals: [100, 50]\nrpn_test_proposals: [50, 25]\nroi_samples: 32\nmax_detections: 10\n"
                 "channels: 16\nbox_fc: 64\nworkers: 0\nlog_interval: 1000\namp: none\ndrop_path: 0.0\n")
SEGMENT_RECIPE = ("model: mambaout_test\ncrop_size: 64\nscale: [64, 64]\neval_mode: whole\neval_stride: 43\n"
                  "channels: 16\naux_channels: 8\nworkers: 0\nlog_interval: 1000\namp: none\ndrop_path: 0.0\n")
CLASSIFY = ["--recipe", "quickstart", "--model", "mambaout_test", "--data-dir", "{data}/digits", "--output", "{out}",
            "--warmup-epochs", "1", "--batch-size", "16", "--workers", "0", "--log-interval", "1000"]
DETECT = ["detect", "train", "--recipe", "{data}/detect.yaml", "--data-dir", "{data}/coco", "--output", "{out}",
          "--batch-size", "2", "--global-batch-size", "2", "--warmup-iters", "2"]
SEGMENT = ["segment", "train", "--recipe", "{data}/segment.yaml", "--data-dir", "{data}/ade", "--output", "{out}",
           "--batch-size", "2", "--global-batch-size", "2", "--warmup-iters", "2", "--eval-interval", "2"]
COMMANDS = {
    "classify": {"train": ["train", *CLASSIFY, "--epochs", "1"], "resume": ["train", *CLASSIFY, "--epochs", "2"],
                 "eval": ["eval", "--checkpoint", "{ckpt}", "--data-dir", "{data}/digits/val", "--workers", "0"],
                 "keys": ["top1", "top5", "loss", "images"]},
    "detect": {"train": [*DETECT, "--epochs", "1"], "resume": [*DETECT, "--epochs", "2"],
               "eval": ["detect", "eval", "--checkpoint", "{ckpt}", "--data-dir", "{data}/coco", "--workers", "0"],
               "keys": ["bbox", "segm"]},
    "segment": {"train": [*SEGMENT, "--iters", "2"], "resume": [*SEGMENT, "--iters", "4"],
                "eval": ["segment", "eval", "--checkpoint", "{ckpt}", "--data-dir", "{data}/ade", "--workers", "0"],
                "keys": ["mIoU", "aAcc", "per_class"]},
}


def make_data(root: Path) -> Path:
    """4 train and 2 val images per digit class, and 4 + 2 generated shapes images in each dense layout."""
    # mambaout.datasets: the name both the pre-#15 code (which wrote the fixtures) and today's import
    from mambaout.datasets import export_digits

    from mambaout.dense.shapes import make_shapes

    full = root / "digits_full"
    export_digits(full)
    for split, n in (("train", 4), ("val", 2)):
        for cls in sorted((full / split).iterdir()):
            (root / "digits" / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copy(f, root / "digits" / split / cls.name / f.name)
    shutil.rmtree(full)
    make_shapes(root / "coco", "coco", n_train=4, n_val=2, size=(64, 64))
    make_shapes(root / "ade", "ade20k", n_train=4, n_val=2, size=(64, 64))
    (root / "detect.yaml").write_text(DETECT_RECIPE)
    (root / "segment.yaml").write_text(SEGMENT_RECIPE)
    return root
