"""Bad inputs lose nothing: unreadable files are skipped with one warning each (or stop a strict run), broken
dataset layouts fail before training with one line, oversized images are refused from their header, odd shapes
go through prediction and evaluation, and image loading raises nothing but ImageLoadError."""
import hashlib
import io
import pickle
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from mambaout import create_model
from mambaout.classify.config import ConfigError
from mambaout.data import CapAspectRatio, create_eval_transform
from mambaout.data.folder import load_image_folder
from mambaout.data.safe import (
    MAX_PIXELS_ENV,
    BadSampleWarning,
    DataFileError,
    ImageLoadError,
    collate_skip,
    count_samples,
    load_image,
    open_image,
)
from mambaout.dense import ade, coco
from mambaout.dense.ade import AdeSegmentation, evaluate_segmentation
from mambaout.dense.coco import CocoDetection, evaluate_coco
from mambaout.dense.shapes import ADE_CLASSES, make_shapes
from mambaout.infer.evaluate import evaluate_model
from mambaout.infer.predict import Predictor

EVAL_CFG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
            "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
HYPOTHESIS = settings(max_examples=50, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


def _encoded(size=(16, 16), fmt="PNG", seed=0, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _corrupt_jpeg() -> bytes:
    data = bytearray(_encoded(fmt="JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = b"\x00\x00\x00\x00"  # a frame of 0 x 0 pixels
    return bytes(data)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels but holds almost no data."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


BAD_FILES = {  # class folder / name: contents
    "cat/corrupt.jpg": _corrupt_jpeg(),
    "cat/truncated.png": _encoded(size=(32, 32))[:300],
    "dog/empty.jpg": b"",
    "dog/notes.png": b"a text file, not a picture\n",
}


@pytest.fixture
def folder(tmp_path):
    """train/{cat,dog}: five good images each, and one of every kind of bad file; sorted, the bad files fall two
    in the first seven samples (cat) and two in the last seven (dog)."""
    root = tmp_path / "train"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            (root / cls / f"good{i}.png").write_bytes(_encoded(size=(20 + i, 24), seed=i))
    for name, data in BAD_FILES.items():
        (root / name).write_bytes(data)
    return root


def _bad_paths(root):
    return sorted(str(root / name) for name in BAD_FILES)


def _skip_warnings(records):
    return [str(r.message) for r in records if issubclass(r.category, BadSampleWarning)]


# ------------------------------------------------------------------------------------------ ImageFolder
def test_image_folder_skips_each_bad_file_with_one_warning(folder):
    ds, classes = load_image_folder(folder, data_cfg=EVAL_CFG)
    assert classes == ["cat", "dog"] and len(ds) == 14
    loader = DataLoader(ds, batch_size=7, shuffle=False, drop_last=True, collate_fn=collate_skip)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")  # repeats must be held back by the dataset itself, not by the filters
        for _ in range(2):  # a second epoch must not warn again
            sizes, skipped = [], 0
            for batch in loader:
                sizes.append(count_samples(batch))
                skipped += 7 - count_samples(batch)
                images, targets = batch
                assert images.shape[1:] == (3, 32, 32)
                assert len(set(targets.tolist())) == 1  # each batch holds one class here
            assert sizes == [5, 5] and skipped == 4
    messages = _skip_warnings(records)
    assert len(messages) == 4
    for path in _bad_paths(folder):
        assert sum(path in m for m in messages) == 1, (path, messages)
    assert ds.bad_files() == _bad_paths(folder)
    assert ds.classes == ["cat", "dog"]  # the wrapped ImageFolder's attributes stay reachable
    # Spawned workers get a pickled copy: it must still skip, and still know what was already reported.
    clone = pickle.loads(pickle.dumps(ds))
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert clone[0] is None and clone[1] is not None
    assert _skip_warnings(again) == [] and clone.bad_files() == _bad_paths(folder)


def test_workers_warn_once_per_file_across_epochs(folder, capfd):
    ds, _ = load_image_folder(folder, data_cfg=EVAL_CFG)
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=2, collate_fn=collate_skip,
                        multiprocessing_context="fork", persistent_workers=False,
                        generator=torch.Generator().manual_seed(0))
    total = 0
    for _ in range(2):  # fresh worker processes each epoch, and a different order
        total += sum(count_samples(batch) for batch in loader)
    err = capfd.readouterr().err
    assert total == 2 * 10
    for path in _bad_paths(folder):
        assert err.count(path) == 1, err
    # What the workers skipped is known to the main process too.
    assert ds.bad_files() == _bad_paths(folder)


def test_strict_image_folder_names_the_file(folder):
    ds, _ = load_image_folder(folder, data_cfg=EVAL_CFG, strict=True)
    bad = {str(path): i for i, (path, _) in enumerate(ds.samples) if path in _bad_paths(folder)}
    assert len(bad) == 4
    for path, index in bad.items():
        with pytest.raises(DataFileError, match=path) as err:
            ds[index]
        assert "\n" not in str(err.value)
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_skip, multiprocessing_context="fork")
    with pytest.raises(DataFileError, match="corrupt.jpg"):
        list(loader)


def test_evaluate_counts_skipped_files(folder):
    val = folder.parent / "val"
    shutil.copytree(folder, val)
    for name in ("cat/truncated.png", "dog/empty.jpg", "dog/notes.png"):
        (val / name).unlink()
    torch.manual_seed(0)
    model = create_model("mambaout_test", num_classes=2)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        res = evaluate_model(model, val, batch_size=4, workers=0, device="cpu")
    assert res["skipped"] == 1 and res["images"] == 10
    assert [m for m in _skip_warnings(records) if "corrupt.jpg" in m]
    with pytest.raises(DataFileError, match="corrupt.jpg"):
        evaluate_model(model, val, batch_size=4, workers=0, device="cpu", strict=True)


@pytest.mark.parametrize("case", ["missing", "no_class_folders", "no_images", "one_class_empty"])
def test_broken_image_folder_layouts_are_one_line_errors(tmp_path, case):
    root = tmp_path / "split"
    if case != "missing":
        root.mkdir()
    if case in ("no_images", "one_class_empty"):
        for cls in ("a", "b"):
            (root / cls).mkdir()
            (root / cls / "readme.txt").write_text("not a supported image suffix")
    if case == "one_class_empty":
        (root / "a" / "x.png").write_bytes(_encoded())
    with pytest.raises(ConfigError) as err:
        load_image_folder(root)
    assert str(root) in str(err.value) and "\n" not in str(err.value)
    if case == "no_images":
        assert "classes a, b." in str(err.value)
    if case == "one_class_empty":
        assert "classes b." in str(err.value)  # the empty class is named, not the one with images


def test_train_and_val_class_folders_must_match(tmp_path):
    from mambaout.classify.config import resolve_config
    from mambaout.classify.train import train

    for split, classes in (("train", ("a", "b")), ("val", ("a",))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                (tmp_path / split / cls / f"{i}.png").write_bytes(_encoded(seed=i))
    cfg = resolve_config({"model": "mambaout_test", "data_dir": str(tmp_path), "output": str(tmp_path / "out"),
                          "batch_size": 2, "workers": 0, "epochs": 1, "warmup_epochs": 0}, recipe="quickstart")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(tmp_path / "val") in str(err.value) and "'b'" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- COCO
@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("coco"), "coco", n_train=6, n_val=3, size=(64, 64))


@pytest.fixture
def broken_coco(coco_root, tmp_path):
    """A copy with train image 2 truncated and val image 1 replaced by text."""
    root = tmp_path / "coco"
    shutil.copytree(coco_root, root)
    train_img = root / "train2017" / "000002.jpg"
    train_img.write_bytes(train_img.read_bytes()[:400])
    (root / "val2017" / "000001.jpg").write_text("not a jpeg")
    return root


def test_coco_skips_unreadable_images(broken_coco):
    ds = CocoDetection(broken_coco, "train2017", train=True, hflip=0.0)
    bad = str(broken_coco / "train2017" / "000002.jpg")
    loader = DataLoader(ds, batch_size=3, shuffle=False, collate_fn=coco.collate)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        sizes, ids = [], []
        for _ in range(2):
            for batch in loader:
                images, targets = batch
                sizes.append(count_samples(batch))
                ids += [t["image_id"] for t in targets]
    assert sizes == [2, 3, 2, 3] and 3 not in ids  # file 000002.jpg is image id 3
    messages = _skip_warnings(records)
    assert len(messages) == 1 and bad in messages[0]
    assert ds.bad_files() == [bad]
    assert coco.collate([None, None]) is None

    strict = CocoDetection(broken_coco, "train2017", train=True, strict=True)
    with pytest.raises(DataFileError, match=bad):
        strict[2]


class CocoAnswers(torch.nn.Module):
    """Answers each image with its own ground truth, found by the image's bytes."""

    def __init__(self, dataset):
        super().__init__()
        self.answers = {}
        for i in range(len(dataset)):
            item = dataset[i]
            if item is not None:
                image, t = item
                self.answers[self._key(image)] = {"boxes": t["boxes"], "labels": t["labels"],
                                                  "scores": torch.ones(len(t["boxes"])),
                                                  "masks": t["masks"].float()[:, None]}

    @staticmethod
    def _key(image):
        return hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest()

    def forward(self, images):
        return [self.answers[self._key(img)] for img in images]


def test_evaluate_coco_leaves_out_unreadable_images(broken_coco):
    ds = CocoDetection(broken_coco, "val2017")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        metrics = evaluate_coco(CocoAnswers(ds), ds, batch_size=2)
    assert metrics["skipped"] == 1
    # The unreadable image is not the model's miss: the rest is answered perfectly, so AP stays 1.
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)


def test_coco_layout_problems_fail_at_construction(coco_root, tmp_path):
    import json

    root = tmp_path / "coco"
    shutil.copytree(coco_root, root)
    (root / "val2017" / "000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000001.jpg") as err:
        CocoDetection(root, "val2017")
    assert "\n" not in str(err.value)
    ann = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    data["images"], data["annotations"] = [], []
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no images") as err:
        CocoDetection(root, "val2017")
    assert str(ann) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- ADE20K
@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("ade"), "ade20k", n_train=6, n_val=3, size=(64, 64))


def _ade(root, split, **kw):
    return AdeSegmentation(root, split, scale=(64, 64), crop_size=32, num_classes=4, class_names=ADE_CLASSES, **kw)


def test_ade_skips_unreadable_images_and_labels(ade_root, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(ade_root, root)
    bad_image = root / "images" / "training" / "shapes_000001.jpg"
    bad_label = root / "annotations" / "training" / "shapes_000004.png"
    bad_image.write_text("not a jpeg")
    bad_label.write_bytes(b"")
    ds = _ade(root, "training", train=True)
    loader = DataLoader(ds, batch_size=3, shuffle=False, collate_fn=ade.collate)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        batches = list(loader) + list(loader)
    assert [count_samples(b) for b in batches] == [2, 2, 2, 2]
    assert batches[0][0].shape == (2, 3, 32, 32) and batches[0][1].dtype == torch.int64
    messages = _skip_warnings(records)
    assert len(messages) == 2
    assert sum(str(bad_image) in m for m in messages) == 1 and sum(str(bad_label) in m for m in messages) == 1

    strict = _ade(root, "training", train=True, strict=True)
    for index, path in ((1, bad_image), (4, bad_label)):
        with pytest.raises(DataFileError, match=str(path)):
            strict[index]


class AdeAnswers(torch.nn.Module):
    """Answers each image with one-hot logits of its own label, found by the image's bytes."""

    def __init__(self, dataset):
        super().__init__()
        self.answers = {}
        for i in range(len(dataset)):
            item = dataset.eval_item(i)
            if item is not None:
                image, label = item
                onehot = torch.zeros(dataset.num_classes, *label.shape)
                onehot.scatter_(0, label.clamp(max=dataset.num_classes - 1)[None], 10.0)
                self.answers[hashlib.sha1(image.numpy().tobytes()).hexdigest()] = onehot

    def forward(self, x):
        return self.answers[hashlib.sha1(x[0].cpu().numpy().tobytes()).hexdigest()][None]


def test_evaluate_segmentation_leaves_out_unreadable_pairs(ade_root, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(ade_root, root)
    (root / "annotations" / "validation" / "shapes_000002.png").write_bytes(_encoded()[:100])
    ds = _ade(root, "validation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        res = evaluate_segmentation(AdeAnswers(ds), ds)
    assert res["skipped"] == 1 and res["mIoU"] == 1.0


def test_ade_unpaired_files(ade_root, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(ade_root, root)
    (root / "images" / "training" / "shapes_000003.jpg").unlink()  # its label is left without an image
    with pytest.warns(UserWarning, match="shapes_000003.png"):
        assert len(_ade(root, "training")) == 5
    with pytest.raises(FileNotFoundError, match="shapes_000003.png") as err:
        _ade(root, "training", strict=True)
    assert "\n" not in str(err.value)
    (root / "annotations" / "validation" / "shapes_000000.png").unlink()  # an image without a label
    with pytest.raises(FileNotFoundError, match="shapes_000000.png") as err:
        _ade(root, "validation")
    assert "\n" not in str(err.value)
    for p in (root / "images" / "validation").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="empty") as err:
        _ade(root, "validation")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------- decompression bombs
def test_pixel_limit_refuses_everywhere(monkeypatch, tmp_path, coco_root, ade_root):
    from mambaout import safe_data

    monkeypatch.setattr(safe_data, "MAX_IMAGE_PIXELS", 100)
    (tmp_path / "big.png").write_bytes(_encoded(size=(20, 20)))
    (tmp_path / "small.png").write_bytes(_encoded(size=(10, 10)))
    assert load_image(tmp_path / "small.png").size == (10, 10)
    with pytest.raises(ImageLoadError, match=r"big\.png: refused, 20x20 = 400 pixels .* limit of 100"):
        load_image(tmp_path / "big.png")
    from mambaout.infer.predict import Predictor

    # prediction reads files through the same check: the big file is an error result, the small one predicted
    results = list(Predictor(model=create_model("mambaout_test", num_classes=2).eval()).predict_paths(
        [tmp_path / "big.png", tmp_path / "small.png"]))
    assert "refused, 20x20 = 400 pixels" in results[0]["error"] and results[1]["topk"]

    root = tmp_path / "folder"
    (root / "a").mkdir(parents=True)
    shutil.copy(tmp_path / "big.png", root / "a" / "big.png")
    shutil.copy(tmp_path / "small.png", root / "a" / "small.png")
    ds, _ = load_image_folder(root, data_cfg=EVAL_CFG)
    with pytest.warns(BadSampleWarning, match="big.png: refused"):
        assert [ds[i] is None for i in range(2)] == [True, False]
    strict, _ = load_image_folder(root, data_cfg=EVAL_CFG, strict=True)
    with pytest.raises(DataFileError, match="big.png: refused, 20x20 = 400 pixels"):
        strict[0]

    # 64 x 64 = 4,096 pixels: every COCO and ADE20K image is over this limit.
    with pytest.raises(DataFileError, match="4,096 pixels"):
        CocoDetection(coco_root, "val2017", strict=True)[0]
    with pytest.raises(DataFileError, match="4,096 pixels"):
        _ade(ade_root, "validation", strict=True)[0]
    with pytest.warns(BadSampleWarning, match="refused"):
        assert CocoDetection(coco_root, "val2017")[0] is None
    with pytest.warns(BadSampleWarning, match="refused"):
        assert _ade(ade_root, "validation")[0] is None

    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")  # the environment overrides the constant
    assert load_image(tmp_path / "big.png").size == (20, 20)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{MAX_PIXELS_ENV}='lots'"):
        load_image(tmp_path / "big.png")


def test_bomb_headers_are_refused_before_decoding(monkeypatch):
    decoded = []

    def no_decoding(self):
        decoded.append(self.size)
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    # Over twice Pillow's own limit (Pillow raises) and between once and twice it (Pillow would only warn).
    for (w, h), needle in (((20000, 20000), "400,000,000 pixels"), ((10000, 10000), "10000x10000 = 100,000,000")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and no DecompressionBombWarning on the side
            with pytest.raises(ImageLoadError, match=needle):
                load_image(io.BytesIO(_png_header(w, h)))
    assert decoded == []
    # Asking for more lifts Pillow's limit too, so the header is accepted (and decoding would be allowed).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setenv(MAX_PIXELS_ENV, "400_000_000")
    with open_image(io.BytesIO(_png_header(20000, 20000))) as img:
        assert img.size == (20000, 20000)


# ---------------------------------------------------------------------------- odd shapes and tiny images
ODD_SIZES = [(4000, 3), (3, 4000), (1, 1), (2, 2), (40000, 1)]


def _odd_image(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def test_predictor_handles_extreme_aspect_ratios_and_tiny_images(tmp_path):
    torch.manual_seed(0)
    p = Predictor("mambaout_test")
    images = [_odd_image(s, i) for i, s in enumerate(ODD_SIZES)]
    for img in images:
        assert tuple(p.transform(img).shape) == p.data_config["input_size"]
    results = p.predict(images, topk=3)
    assert len(results) == len(ODD_SIZES)
    assert all(len(r) == 3 and all(np.isfinite(c["prob"]) and 0 <= c["prob"] <= 1 for c in r) for r in results)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"odd{i}.png")
        img.save(paths[-1])
    rows = list(p.predict_paths(paths, batch_size=2, topk=1))
    assert [r["path"] for r in rows] == [str(q) for q in paths] and all("topk" in r for r in rows)


def test_aspect_cap_only_trims_what_the_crop_never_sees():
    assert isinstance(create_eval_transform(EVAL_CFG).transforms[0], CapAspectRatio)
    # Squashing resizes to a fixed size whatever the input's shape: trimming would change what it sees.
    assert not isinstance(create_eval_transform({**EVAL_CFG, "crop_mode": "squash"}).transforms[0], CapAspectRatio)
    cap = CapAspectRatio(16)
    assert cap(Image.new("RGB", (40000, 1))).size == (16, 1)
    assert cap(Image.new("RGB", (3, 4000))).size == (3, 48)
    assert cap(Image.new("RGB", (48, 3))).size == (48, 3)
    cfg = {**EVAL_CFG, "crop_pct": 0.875}
    from timm.data import create_transform

    plain = create_transform(**cfg, is_training=False)
    ramp = np.tile(np.linspace(0, 255, 1000, dtype=np.float32)[None, :, None], (3, 1, 3)).astype(np.uint8)
    for img in (_odd_image((48, 3)), _odd_image((3, 40))):  # within the ratio: exactly timm's transform
        assert torch.equal(create_eval_transform(cfg)(img), plain(img))
    smooth = Image.fromarray(ramp)  # 1000 x 3: trimmed, but the centre crop sees the same pixels
    diff = (create_eval_transform(cfg)(smooth) - plain(smooth)).abs()
    assert diff.mean() < 0.05


def test_evaluate_handles_extreme_aspect_ratios_and_tiny_images(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    for i, size in enumerate(ODD_SIZES):
        _odd_image(size, i).save(tmp_path / ("a", "b")[i % 2] / f"{i}.png")
    torch.manual_seed(0)
    model = create_model("mambaout_test", num_classes=2)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64)}
    res = evaluate_model(model, tmp_path, batch_size=2, workers=0, device="cpu")
    assert res["images"] == len(ODD_SIZES) and res["skipped"] == 0 and np.isfinite(res["loss"])


# ------------------------------------------------------------------------------------ property-based
SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF",
              b"P6\n", b"\x00\x00\x01\x00"]


@HYPOTHESIS
@given(prefix=st.sampled_from(SIGNATURES), body=st.binary(max_size=2048))
def test_random_bytes_raise_only_image_load_error(prefix, body):
    try:
        img = load_image(io.BytesIO(prefix + body))
    except ImageLoadError as e:
        assert str(e).startswith("<image>: ")
    else:  # random bytes that happen to be a picture must still come back as RGB
        assert img.mode == "RGB"


VALID = {fmt: _encoded(size=(37, 23), fmt=fmt, seed=3) for fmt in ("PNG", "JPEG")}


@HYPOTHESIS
@given(fmt=st.sampled_from(sorted(VALID)), data=st.data())
def test_truncated_images_raise_only_image_load_error(fmt, data):
    full = VALID[fmt]
    cut = data.draw(st.integers(0, len(full) - 1))
    try:
        img = load_image(io.BytesIO(full[:cut]))
    except ImageLoadError:
        return
    assert img.mode == "RGB" and img.size == (37, 23)


MODES = ["L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK"]
BYTES_PER_PIXEL = {"L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4, "I;16": 2, "CMYK": 4}


@HYPOTHESIS
@given(mode=st.sampled_from(MODES), width=st.integers(1, 64), height=st.integers(1, 64),
       seed=st.integers(0, 2**32 - 1))
def test_valid_images_of_any_mode_load_as_rgb_of_the_same_size(mode, width, height, seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, width * height * BYTES_PER_PIXEL[mode], dtype=np.uint8).tobytes()
    img = Image.frombytes(mode, (width, height), raw)
    if mode == "P":
        img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode == "CMYK" else "PNG")
    out = load_image(io.BytesIO(buf.getvalue()))
    assert out.mode == "RGB" and out.size == (width, height)
    if mode == "RGB":
        assert np.array_equal(np.asarray(out), np.asarray(img))
    if mode == "L":
        assert all(np.array_equal(np.asarray(out)[..., c], np.asarray(img)) for c in range(3))
