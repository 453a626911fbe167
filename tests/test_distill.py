"""Distillation: DeiT's soft and hard losses, the teacher frozen in eval mode on the student's preprocessing
(re-normalised and resized when they differ), our models and timm's as teachers, the teacher's cost reported."""
import json

import pytest
import torch
import torch.nn.functional as F

import mambaout
from mambaout.classify.config import ConfigError, resolve_config
from mambaout.classify.distill import Distiller, load_teacher
from mambaout.classify.train import train


class Fixed(torch.nn.Module):
    """A 'teacher' whose logits are given, to check the loss formulas."""

    def __init__(self, logits):
        super().__init__()
        self.out = logits
        self.num_classes = logits.shape[1]

    def forward(self, x):
        return self.out


def test_soft_and_hard_losses_are_deits():
    torch.manual_seed(0)
    s, t, base = torch.randn(6, 5), torch.randn(6, 5), torch.tensor(1.7)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    soft = Distiller(Fixed(t), mean, std, 5, "soft", temperature=3.0, alpha=0.3)
    total, parts = soft.loss(s, torch.zeros(6, 3, 8, 8), base)
    kl = F.kl_div(F.log_softmax(s / 3, 1), F.log_softmax(t / 3, 1), reduction="sum", log_target=True) * 9 / 6
    assert torch.allclose(parts["distill_loss"], kl) and torch.allclose(total, 0.7 * base + 0.3 * kl)
    hard = Distiller(Fixed(t), mean, std, 5, "hard", alpha=0.5)
    total, parts = hard.loss(s, torch.zeros(6, 3, 8, 8), base)
    assert torch.allclose(total, 0.5 * base + 0.5 * F.cross_entropy(s, t.argmax(1)))


def test_the_teacher_sees_its_own_preprocessing():
    torch.manual_seed(0)
    teacher = mambaout.create_model("mambaout_test", num_classes=4).train()
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                              "input_size": (3, 48, 48)}
    student_mean, student_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    d = Distiller(teacher, student_mean, student_std, 4, img_size=32)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    raw = torch.rand(2, 3, 32, 32)
    as_student = (raw - torch.tensor(student_mean).view(1, 3, 1, 1)) / torch.tensor(student_std).view(1, 3, 1, 1)
    as_teacher = F.interpolate((raw - 0.5) / 0.25, size=(48, 48), mode="bilinear", align_corners=False,
                               antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(d.logits(as_student), teacher(as_teacher), atol=1e-4, rtol=1e-4)
    assert d.images == 2 and d.images_per_sec() > 0 and d.images == 0


def test_a_teacher_of_other_classes_is_one_line():
    with pytest.raises(ConfigError, match="the teacher predicts 7 classes, the student 10"):
        Distiller(mambaout.create_model("mambaout_test", num_classes=7), (0,) * 3, (1,) * 3, 10)
    with pytest.raises(ConfigError, match="neither a checkpoint file"):
        load_teacher("no_such_model")
    with pytest.raises(ConfigError, match="teacher"):
        resolve_config({"teacher": "mambaout_test", "linear_probe": True})


@pytest.fixture(scope="module")
def teacher_ckpt(small_digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(resolve_config({"model": "mambaout_test", "data_dir": str(small_digits), "output": str(out),
                          "epochs": 2, "warmup_epochs": 0, "batch_size": 16, "workers": 0}, recipe="quickstart"))
    return out / "best.pt"


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_training_with_our_checkpoint_as_teacher(kind, small_digits, teacher_ckpt, tmp_path):
    before = torch.load(teacher_ckpt, weights_only=True)["model"]
    summary = train(resolve_config({"model": "mambaout_test", "data_dir": str(small_digits), "output": str(tmp_path),
                                    "epochs": 1, "warmup_epochs": 0, "batch_size": 16, "workers": 0,
                                    "teacher": str(teacher_ckpt), "distill": kind, "distill_temperature": 2.0},
                                   recipe="quickstart"))
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["teacher_images_per_sec"] > 0 and row["distill_loss"] > 0 and row["label_loss"] > 0
    assert summary["teacher_images_per_sec"] == row["teacher_images_per_sec"]
    after = torch.load(teacher_ckpt, weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "teacher" in (tmp_path / "train.log").read_text()


def test_a_timm_model_as_teacher(small_digits, tmp_path):
    import timm

    torch.manual_seed(0)
    timm_teacher = timm.create_model("resnet10t", num_classes=10)
    torch.save(timm_teacher.state_dict(), tmp_path / "resnet.pt")
    teacher = load_teacher("timm:resnet10t", str(tmp_path / "resnet.pt"), num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher.eval()(x), timm_teacher.eval()(x))
    summary = train(resolve_config({"model": "mambaout_test", "data_dir": str(small_digits), "output":
                                    str(tmp_path / "run"), "epochs": 1, "warmup_epochs": 0, "batch_size": 16,
                                    "workers": 0, "teacher": "timm:resnet10t",
                                    "teacher_checkpoint": str(tmp_path / "resnet.pt")}, recipe="quickstart"))
    assert summary["teacher_images_per_sec"] > 0
