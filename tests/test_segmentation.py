"""ADE20K-style semantic segmentation: the mIoU meter, the data pipelines, UperNet and the inference modes."""
import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_forked
from PIL import Image
from torch import nn

from mambaout.dense.ade import (
    ADE20K_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AdeSegmentation,
    IoUMeter,
    blend,
    colorize,
    evaluate_segmentation,
    hsv_to_rgb,
    palette,
    photometric_distortion,
    random_crop_box,
    rgb_to_hsv,
)
from mambaout.dense.backbone import MambaOutBackbone
from mambaout.dense.segmentation import (
    UperNet,
    fit_size,
    predict_logits,
    predict_probs,
    segmentation_loss,
    segmentor_from_name,
    slide_logits,
)
from mambaout.dense.shapes import ADE_CLASSES, make_shapes

SIZE = 96


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("ade"), "ade20k", n_train=4, n_val=6, size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def upernet():
    torch.manual_seed(0)
    return UperNet(MambaOutBackbone("mambaout_test"), num_classes=4, channels=32, aux_channels=16)


def _raw_label(root, split, i):
    return np.array(Image.open(root / "annotations" / split / f"shapes_{i:06d}.png")).astype(np.int64)


# ---------------------------------------------------------------- metric


def test_iou_meter_perfect_prediction():
    meter = IoUMeter(4, class_names=ADE_CLASSES)
    label = torch.tensor([[0, 1, 2], [3, 255, 0]])
    meter.update(label.clone(), label)
    res = meter.compute()
    assert res["mIoU"] == res["aAcc"] == res["mAcc"] == 1.0
    assert res["per_class"] == {"background": 1.0, "circle": 1.0, "square": 1.0, "triangle": 1.0}


def test_iou_meter_known_perturbation():
    label = torch.tensor([[0, 0, 1, 1],
                          [0, 0, 1, 1],
                          [2, 2, 2, 255],
                          [2, 2, 2, 255]])
    pred = label.clone()
    pred[0, 0] = 1  # one class-0 pixel called class 1
    pred[3, 0] = 0  # one class-2 pixel called class 0
    pred[2:, 3] = 3  # on ignored pixels: class 3 must not appear anywhere
    meter = IoUMeter(4)
    meter.update(pred, label)
    res = meter.compute()
    # By hand: gt counts (4, 4, 6), predicted counts (4, 5, 5), true positives (3, 4, 5); 14 labelled pixels.
    iou = [3 / (4 + 4 - 3), 4 / (4 + 5 - 4), 5 / (6 + 5 - 5)]
    assert res["per_class"] == {"class_0": pytest.approx(iou[0]), "class_1": pytest.approx(iou[1]),
                                "class_2": pytest.approx(iou[2]), "class_3": None}
    assert res["mIoU"] == pytest.approx(sum(iou) / 3)
    assert res["aAcc"] == pytest.approx(12 / 14)
    assert res["mAcc"] == pytest.approx((3 / 4 + 4 / 4 + 5 / 6) / 3)
    assert int(meter.hist.sum()) == 14

    # A class predicted but never in the ground truth has IoU 0 and does count in the mean.
    meter.update(torch.tensor([3]), torch.tensor([0]))
    res = meter.compute()
    assert res["per_class"]["class_3"] == 0.0
    assert res["per_class"]["class_0"] == pytest.approx(3 / (5 + 4 - 3))
    assert res["mIoU"] == pytest.approx((3 / 6 + iou[1] + iou[2] + 0.0) / 4)


def test_iou_meter_rejects_bad_values_and_reports_nan_when_empty():
    meter = IoUMeter(3)
    with pytest.raises(ValueError, match="label values"):
        meter.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="predictions"):
        meter.update(torch.tensor([5]), torch.tensor([0]))
    res = meter.compute()
    assert np.isnan(res["mIoU"]) and np.isnan(res["aAcc"])
    assert set(res["per_class"].values()) == {None}


# ---------------------------------------------------------------- data


def test_ade20k_classes():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree") and ADE20K_CLASSES[-1] == "flag"


def test_eval_item_shifts_zero_label(shapes_root):
    ds = AdeSegmentation(shapes_root, "validation", scale=(2 * SIZE, SIZE // 2), num_classes=4,
                         class_names=ADE_CLASSES)
    assert len(ds) == 6 and ds.files[0].name == "shapes_000000.jpg"
    image, label = ds[0]
    raw = _raw_label(shapes_root, "validation", 0)
    assert image.shape == (3, SIZE // 2, SIZE // 2) and image.dtype == torch.float32
    assert label.shape == (SIZE, SIZE) and label.dtype == torch.int64
    expected = np.where(raw == 0, 255, raw - 1)
    np.testing.assert_array_equal(label.numpy(), expected)
    assert (label[raw == 0] == 255).all() and (label[raw == 1] == 0).all()
    assert set(np.unique(label.numpy())) <= {0, 1, 2, 3, 255}
    # Without the shift the raw values come through.
    raw_ds = AdeSegmentation(shapes_root, "validation", reduce_zero_label=False, num_classes=5)
    np.testing.assert_array_equal(raw_ds.load_pair(0)[1], raw)
    assert raw_ds.class_names == [f"class_{k}" for k in range(5)]
    assert AdeSegmentation(shapes_root, "validation").class_names == list(ADE20K_CLASSES)


def test_train_crop_padding_and_flip(shapes_root):
    torch.manual_seed(0)
    # A fixed ratio of 0.5 makes the 96x96 image 48x48: smaller than the 64 crop, so both are padded.
    ds = AdeSegmentation(shapes_root, "training", train=True, crop_size=64, scale=(SIZE, SIZE),
                         ratio_range=(0.5, 0.5), num_classes=4)
    image, label = ds[0]
    assert image.shape == (3, 64, 64) and label.shape == (64, 64) and label.dtype == torch.int64
    assert (label[48:, :] == 255).all() and (label[:, 48:] == 255).all()
    assert (image[:, 48:, :] == 0).all() and (image[:, :, 48:] == 0).all()
    assert set(label[:48, :48].unique().tolist()) <= {0, 1, 2, 3, 255}
    # No photometric change can move a normalised pixel outside the [0, 1] range's image.
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert (image >= lo.view(3, 1, 1) - 1e-5).all() and (image <= hi.view(3, 1, 1) + 1e-5).all()

    # Crops of a larger image: no padding, and the label crop is a (possibly mirrored) window of the resized label.
    ds = AdeSegmentation(shapes_root, "training", train=True, crop_size=(40, 56), scale=(SIZE, SIZE),
                         ratio_range=(1.0, 1.0), cat_max_ratio=1.0, num_classes=4)
    full = torch.from_numpy(ds.load_pair(1)[1].astype(np.int64))
    windows = {tuple(full[t:t + 40, s:s + 56].flatten().tolist()) for t in range(SIZE - 39) for s in range(SIZE - 55)}
    flips = 0
    for _ in range(6):
        image, label = ds[1]
        assert image.shape == (3, 40, 56) and not (label == 255).all()
        plain, mirrored = tuple(label.flatten().tolist()), tuple(label.flip(-1).flatten().tolist())
        assert plain in windows or mirrored in windows
        flips += plain not in windows
    assert 0 < flips < 6  # flipped sometimes, not always (p = 0.5, seeded)


def test_random_crop_box_cat_max_ratio():
    # Left half class 0, right half class 1; a 64-wide crop at offset o holds o columns of class 1, so one class
    # covers < 75% only for 16 < o < 48 (about half of the 65 offsets).
    label = np.zeros((64, 128), dtype=np.uint8)
    label[:, 64:] = 1
    torch.manual_seed(0)

    def balanced(ratio):
        lefts = [random_crop_box(label, (64, 64), ratio)[1] for _ in range(300)]
        assert all(0 <= x <= 64 for x in lefts)
        return np.mean([16 < x < 48 for x in lefts])

    assert balanced(1.0) < 0.65
    assert balanced(0.75) > 0.98  # eleven draws: all fail with probability ~0.52^11
    # Ignored pixels do not count: one class plus ignore never passes, yet a crop still comes back.
    label[:, 64:] = 255
    assert random_crop_box(label, (64, 64), 0.75)[0] == 0


def test_hsv_round_trip_and_photometric_distortion():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, (7, 5, 3)).astype(np.float64)
    rgb[0, 0] = (40, 40, 40)  # grey: hue undefined, saturation 0
    hsv = rgb_to_hsv(rgb)
    for y, x in [(0, 0), (3, 2), (6, 4)]:
        h, s, v = colorsys.rgb_to_hsv(*(rgb[y, x] / 255))
        assert hsv[y, x] == pytest.approx([h * 360, s, v * 255], abs=1e-9)
    np.testing.assert_allclose(hsv_to_rgb(hsv), rgb, atol=1e-9)

    image = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    torch.manual_seed(1)
    outs = [photometric_distortion(image) for _ in range(8)]
    assert all(o.dtype == np.float32 and o.shape == image.shape and o.min() >= 0 and o.max() <= 255 for o in outs)
    assert sum(not np.allclose(o, image, atol=1e-3) for o in outs) >= 6  # P(no change) = 1/16


def test_dataset_errors(shapes_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016") as err:
        AdeSegmentation(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "images" / "training") in str(err.value)

    (tmp_path / "broken").mkdir()
    root = make_shapes(tmp_path / "broken", "ade20k", n_train=2, n_val=2, size=(32, 32))
    (root / "annotations" / "training" / "shapes_000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="shapes_000001.png"):
        AdeSegmentation(root, "training")

    for p in (root / "images" / "validation").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="empty"):
        AdeSegmentation(root, "validation")

    (root / "images" / "training" / "shapes_000001.jpg").unlink()
    bad = np.ones((32, 32), dtype=np.uint8)
    bad[5, 5] = 10  # class 9 after the shift; only 4 classes exist
    Image.fromarray(bad).save(root / "annotations" / "training" / "shapes_000000.png")
    ds = AdeSegmentation(root, "training", num_classes=4)
    with pytest.raises(ValueError, match=r"shapes_000000\.png: label value 9"):
        ds[0]


def test_palette_colorize_blend():
    pal = palette(150)
    assert pal.shape == (150, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == 150 and not (pal == 0).all(1).any()  # distinct, none black
    np.testing.assert_array_equal(palette(150), pal)
    label = np.array([[0, 1], [255, 2]])
    col = np.asarray(colorize(label))
    np.testing.assert_array_equal(col[0, 0], pal[0])
    np.testing.assert_array_equal(col[1, 1], pal[2])
    np.testing.assert_array_equal(col[1, 0], [0, 0, 0])
    image = Image.fromarray(np.full((4, 4, 3), 100, np.uint8))
    out = np.asarray(blend(image, label, alpha=0.5))
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[2:, :2], 100)  # ignored pixels: the image unchanged
    np.testing.assert_array_equal(out[0, 0], np.round((100 + pal[0].astype(float)) / 2 + 1e-9))


# ---------------------------------------------------------------- model


def test_upernet_shapes_loss_and_gradients(upernet):
    model = upernet.train()
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 80)
    labels = torch.randint(0, 4, (2, 64, 80))
    labels[:, :8] = 255
    total, parts = model.loss(images, labels)
    assert set(parts) == {"loss_decode", "loss_aux"}
    assert torch.isfinite(total) and total.item() == pytest.approx(
        (parts["loss_decode"] + 0.4 * parts["loss_aux"]).item(), rel=1e-5)
    # Near-uniform initial logits: both losses start near log(K).
    assert parts["loss_decode"].item() == pytest.approx(np.log(4), abs=0.3)
    model.zero_grad()
    total.backward()
    stem = [p.grad for p in model.backbone.body.stem.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in stem)
    assert model.aux_head.classifier.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 88))
    assert out.shape == (1, 4, 72, 88)
    assert model.num_classes == 4 and model.ignore_index == 255


def test_upernet_train_batch_one_is_a_clear_error(upernet):
    upernet.train()
    with pytest.raises(ValueError, match="batch of at least 2"):
        upernet.loss(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long))
    upernet.eval()


def test_loss_ignores_ignored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[0, :3] = 255
    loss = segmentation_loss(logits, labels)
    changed = logits.detach().clone()
    changed[0, :, :3] += torch.randn(4, 3, 8) * 10
    assert segmentation_loss(changed, labels).item() == pytest.approx(loss.item(), rel=1e-6)
    # The default averages over every pixel (mmseg's avg_non_ignore=False); "labelled" over the labelled ones.
    every = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum") / labels.numel()
    assert loss.item() == pytest.approx(every.item(), rel=1e-6)
    labelled = segmentation_loss(logits, labels, average="labelled")
    assert labelled.item() == pytest.approx(F.cross_entropy(logits, labels, ignore_index=255).item(), rel=1e-6)
    loss.backward()
    assert (logits.grad[0, :, :3] == 0).all()
    # Logits at another size are resized to the labels; an all-ignored batch is 0, not NaN.
    assert segmentation_loss(torch.randn(1, 4, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long)).isfinite()
    assert segmentation_loss(logits, torch.full((2, 8, 8), 255)).item() == 0.0


def test_segmentor_from_name():
    model = segmentor_from_name("mambaout_test", num_classes=3, channels=16, aux_weight=0.0)
    assert model.aux_head is None and model.decode_head.classifier.out_channels == 3
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------- inference


def test_slide_logits(upernet):
    model = upernet.eval()
    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        # stride == crop on a multiple of the crop: the result is the tiles side by side.
        tiled = slide_logits(model, image, crop_size=64, stride=64)
        expected = torch.cat([model(image[..., :64]), model(image[..., 64:])], dim=-1)
        torch.testing.assert_close(tiled, expected)
        # Overlapping windows on an uneven size; windows end at the edges.
        assert slide_logits(model, torch.randn(2, 3, 70, 100), crop_size=64, stride=43).shape == (2, 4, 70, 100)
        # Smaller than the crop: padded to the crop, padding cut off.
        small = torch.randn(1, 3, 40, 50)
        out = predict_logits(model, small, mode="slide", crop_size=64, stride=43)
        torch.testing.assert_close(out, model(F.pad(small, (0, 14, 0, 24)))[..., :40, :50])
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        predict_logits(model, small, mode="tiles")


def test_slide_equals_whole_for_a_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    image = torch.randn(2, 3, 70, 100)
    with torch.no_grad():
        torch.testing.assert_close(slide_logits(model, image, crop_size=(32, 48), stride=(20, 30)), model(image))


def test_predict_probs_flip_and_scales():
    torch.manual_seed(0)
    image = torch.randn(1, 3, 40, 60)
    with torch.no_grad():
        # A pointwise model is mirror-equivariant: mirroring and un-mirroring must change nothing.
        pointwise = nn.Conv2d(3, 4, 1)
        plain = predict_probs(pointwise, image, (40, 60), base_scale=None)
        torch.testing.assert_close(predict_probs(pointwise, image, (40, 60), flip=True, base_scale=None), plain)
        torch.testing.assert_close(plain, pointwise(image).softmax(1))
        # A model that sees position is not: flip averages the two views, un-mirrored.
        conv = nn.Conv2d(3, 4, 5, padding=2)
        nn.init.normal_(conv.weight)
        both = predict_probs(conv, image, (40, 60), flip=True, base_scale=None)
        expected = (conv(image).softmax(1) + conv(image.flip(-1)).flip(-1).softmax(1)) / 2
        torch.testing.assert_close(both, expected)
        # Several scales and flips, returned at another size: a distribution per pixel.
        probs = predict_probs(conv, image, (50, 70), scales=(0.5, 1.0, 1.5), flip=True, base_scale=(80, 40),
                              mode="slide", crop_size=32, stride=21)
        assert probs.shape == (1, 4, 50, 70)
        torch.testing.assert_close(probs.sum(1), torch.ones(1, 50, 70))
    assert fit_size(512, 683, (2048, 512)) == (512, 683)
    assert fit_size(400, 3000, (2048, 512)) == (273, 2048)
    assert fit_size(96, 96, (96 * 1.5, 96 * 1.5)) == (144, 144)


class PerfectModel(nn.Module):
    """Answers with the ground truth it was given, read straight from the PNGs (independently of the dataset):
    it finds which stored image (or its mirror) the input is and returns that label's one-hot logits, resized
    (nearest) to the input. corrupt: image j gets its top 4(j+1) rows wrong, so each image scores differently."""

    def __init__(self, root, n, num_classes=4, corrupt=False):
        super().__init__()
        self.calls = 0
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        self.images, self.onehots = [], []
        for i in range(n):
            rgb = np.asarray(Image.open(root / "images" / "validation" / f"shapes_{i:06d}.jpg").convert("RGB"))
            self.images.append(torch.from_numpy(((rgb / 255 - mean) / std).transpose(2, 0, 1)).float())
            raw = torch.from_numpy(_raw_label(root, "validation", i))
            shifted = torch.where(raw == 0, torch.full_like(raw, 255), raw - 1)
            onehot = torch.zeros(num_classes, *raw.shape)
            valid = shifted != 255
            onehot[shifted[valid], valid.nonzero()[:, 0], valid.nonzero()[:, 1]] = 10.0
            if corrupt:
                onehot[:, : 4 * (i + 1)] = 0
                onehot[i % num_classes, : 4 * (i + 1)] = 10.0
            self.onehots.append(onehot)

    def forward(self, x):
        assert x.shape[0] == 1
        self.calls += 1
        size = self.images[0].shape[-2:]
        probe = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
        errors = [((probe - img.flip(-1) if m else probe - img) ** 2).mean().item()
                  for img in self.images for m in (False, True)]
        best = int(np.argmin(errors))
        onehot = self.onehots[best // 2].flip(-1) if best % 2 else self.onehots[best // 2]
        return F.interpolate(onehot[None], size=x.shape[-2:], mode="nearest")


def test_evaluate_perfect_model(shapes_root):
    model = PerfectModel(shapes_root, 6)
    # Test scale = image size: no resizing anywhere, so the result must be exact.
    ds = AdeSegmentation(shapes_root, "validation", scale=(SIZE, SIZE), num_classes=4, class_names=ADE_CLASSES)
    res = evaluate_segmentation(model, ds)
    assert res["mIoU"] == res["aAcc"] == res["mAcc"] == 1.0
    assert set(res["per_class"]) == set(ADE_CLASSES) and res["per_class"]["background"] == 1.0
    assert evaluate_segmentation(model, ds, flip=True)["mIoU"] == 1.0
    # Predicting at 1.5x and resizing back loses only edge pixels.
    ds.scale = (1.5 * SIZE, 1.5 * SIZE)
    res = evaluate_segmentation(model, ds, amp=True)
    assert 0.95 < res["mIoU"] <= 1.0 and res["aAcc"] > 0.98
    ms = evaluate_segmentation(model, ds, scales=(0.75, 1.0), flip=True)
    assert 0.9 < ms["mIoU"] <= 1.0


def test_evaluate_upernet_all_modes(shapes_root, upernet):
    """The real model through slide windows, two scales, flips and bf16 autocast: valid fractions come back."""
    ds = AdeSegmentation(shapes_root, "validation", scale=(64, 64), num_classes=4, class_names=ADE_CLASSES)
    upernet.train()
    res = evaluate_segmentation(upernet, ds, mode="slide", crop_size=48, stride=32, scales=(0.75, 1.0), flip=True,
                                amp=True)
    assert upernet.training  # the caller's mode is restored
    upernet.eval()
    assert 0 <= res["mIoU"] <= 1 and 0 <= res["aAcc"] <= 1 and set(res["per_class"]) == set(ADE_CLASSES)


def _eval_rank(rank, root, n, store, out):
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = PerfectModel(root, n, corrupt=True)
        ds = AdeSegmentation(root, "validation", scale=(SIZE, SIZE), num_classes=4)
        res = evaluate_segmentation(model, ds)
        (out / f"rank{rank}.json").write_text(json.dumps({"res": res, "calls": model.calls}))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("n_val", [6, 5], ids=["even", "uneven"])
def test_evaluate_distributed_shares_images_and_sums(n_val, shapes_root, tmp_path):
    import json

    root = shapes_root if n_val == 6 else make_shapes(tmp_path / "odd", "ade20k", n_train=1, n_val=n_val,
                                                       size=(SIZE, SIZE))
    ds = AdeSegmentation(root, "validation", scale=(SIZE, SIZE), num_classes=4)
    single = evaluate_segmentation(PerfectModel(root, n_val, corrupt=True), ds)
    assert 0.3 < single["mIoU"] < 0.99  # the corruption shows, differently per image
    run_forked(_eval_rank, (root, n_val, tmp_path / "store", tmp_path), timeout=60)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # every image once, split over the ranks: none padded or repeated when the count is odd
    assert [r["calls"] for r in ranks] == [(n_val + 1) // 2, n_val // 2]
    for r in ranks:
        assert r["res"]["mIoU"] == pytest.approx(single["mIoU"], abs=1e-12)
        assert r["res"]["aAcc"] == pytest.approx(single["aAcc"], abs=1e-12)
        assert r["res"]["per_class"] == pytest.approx(single["per_class"], abs=1e-12)
