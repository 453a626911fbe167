"""predict: every kind of image Pillow reads, a corrupt file among them, labels, table and JSON output."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from mambaout import create_model
from mambaout.infer.predict import ImageLoadError, Predictor, load_image, to_rgb

CLASSES = ["zero", "one", "two", "three"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 4-class checkpoint in this project's own format, recording its model and class names."""
    torch.manual_seed(0)
    model = create_model("mambaout_test", num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    cfg = {**model.pretrained_cfg, "input_size": [3, 64, 64], "label_names": CLASSES}
    torch.save({"model": model.state_dict(), "model_name": "mambaout_test", "class_names": CLASSES,
                "pretrained_cfg": cfg}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    astro = Image.fromarray(data.astronaut())
    astro.save(folder / "rgb.jpg")
    Image.fromarray(data.camera()).save(folder / "gray.png")
    rgba = Image.fromarray(data.chelsea()).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    Image.fromarray(data.camera().astype(np.uint16) * 257).save(folder / "deep16.png")
    Image.fromarray(data.coffee()).convert("P").save(folder / "palette.gif")
    Image.fromarray(data.coffee()).convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "corrupt.png").write_bytes((folder / "gray.png").read_bytes()[:200])
    (folder / "notes.jpg").write_text("not an image")
    return folder


def test_modes_become_rgb(images):
    assert Image.open(images / "deep16.png").mode.startswith("I")
    for name in ("rgb.jpg", "gray.png", "rgba.png", "deep16.png", "palette.gif", "cmyk.jpg"):
        img = load_image(images / name)
        assert img.mode == "RGB" and img.size[0] > 0, name
    # 16-bit greys keep their brightness: the same picture as its 8-bit version, within rounding.
    a = np.asarray(load_image(images / "deep16.png"), dtype=int)
    b = np.asarray(load_image(images / "gray.png"), dtype=int)
    assert np.abs(a - b).max() <= 1
    # Half-transparent pixels are laid on white, not black.
    assert np.asarray(to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(data.astronaut()[:, :400])  # not square, so a rotation shows in the size
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "rot.jpg", exif=exif)
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.size == (img.height, img.width)


def test_errors_name_the_file(images, tmp_path):
    for name, needle in (("corrupt.png", "unreadable"), ("notes.jpg", "not an image")):
        with pytest.raises(ImageLoadError, match=f"{name}.*{needle}"):
            load_image(images / name)
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_predictor_uses_stored_labels_and_batches(checkpoint, images):
    p = Predictor(checkpoint=checkpoint)
    assert p.labels == CLASSES and p.data_config["input_size"] == (3, 64, 64)
    results = list(p.predict_paths(sorted(images.iterdir()), batch_size=3, topk=3))
    assert [r["path"].rsplit("/", 1)[1] for r in results] == sorted(f.name for f in images.iterdir())
    bad = {r["path"].rsplit("/", 1)[1] for r in results if "error" in r}
    assert bad == {"corrupt.png", "notes.jpg"}
    for r in results:
        if "topk" in r:
            assert len(r["topk"]) == 3 and r["topk"][0]["label"] in CLASSES
            probs = [t["prob"] for t in r["topk"]]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    # Batching does not change the answer.
    one = Predictor(checkpoint=checkpoint).predict([load_image(images / "rgb.jpg")], topk=4)[0]
    batched = next(r for r in results if r["path"].endswith("rgb.jpg"))["topk"]
    assert [t["index"] for t in batched] == [t["index"] for t in one[:3]]


def test_imagenet_labels_for_imagenet_heads():
    p = Predictor(model=create_model("mambaout_test"))
    assert len(p.labels) == 1000 and p.labels[1].startswith("goldfish")


def test_cli_json_reports_the_corrupt_file_and_fails(checkpoint, images):
    r = subprocess.run([sys.executable, "-m", "mambaout", "predict", str(images), "--checkpoint", str(checkpoint),
                        "--json", "--topk", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 8
    errors = {row["path"].rsplit("/", 1)[1]: row["error"] for row in rows if "error" in row}
    assert set(errors) == {"corrupt.png", "notes.jpg"} and "corrupt.png" in errors["corrupt.png"]
    good = [row for row in rows if "topk" in row]
    assert len(good) == 6 and all(set(row["topk"][0]) == {"label", "index", "prob"} for row in good)
    assert "2 of 8 file(s) could not be classified" in r.stderr


def test_cli_table_output(checkpoint, images):
    r = subprocess.run([sys.executable, "-m", "mambaout", "predict", str(images / "rgb.jpg"), "--checkpoint",
                        str(checkpoint)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("rgb.jpg") and len(lines) == 5  # four classes only
    assert any(name in lines[1] for name in CLASSES) and "%" in lines[1]


def test_load_from_file_object():
    buf = io.BytesIO()
    Image.fromarray(data.camera()).save(buf, format="PNG")
    buf.seek(0)
    assert load_image(buf).mode == "RGB"


def test_onnx_backend_agrees_with_torch(checkpoint, images, tmp_path):
    from mambaout.infer.export import export_model

    torch_p = Predictor(checkpoint=checkpoint)
    onnx_file = export_model(torch_p.model, "onnx", tmp_path / "small.onnx")
    onnx_p = Predictor(checkpoint=onnx_file)  # preprocessing and labels come from the file alone
    assert onnx_p.backend == "onnx" and onnx_p.labels == CLASSES
    img = [load_image(images / "rgb.jpg"), load_image(images / "gray.png")]
    assert (onnx_p.logits(img) - torch_p.logits(img)).abs().max() < 1e-4
    # A torch checkpoint run with --backend onnx is exported on the fly and gives the same answer.
    on_the_fly = Predictor(checkpoint=checkpoint, backend="onnx")
    assert [t["index"] for t in on_the_fly.predict(img)[0]] == [t["index"] for t in torch_p.predict(img)[0]]
    r = subprocess.run([sys.executable, "-m", "mambaout", "predict", str(images / "rgb.jpg"), "--checkpoint",
                        str(onnx_file), "--backend", "onnx", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["topk"][0]["label"] == torch_p.predict(img[:1])[0][0]["label"]
