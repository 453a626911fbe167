"""COCO Mask R-CNN: the dataset against its JSON, COCOeval numbers known by construction, the detector's losses
and outputs, distributed evaluation and drawing. All on generated shapes (exact ground truth, 96x96 images)."""
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import run_forked

from mambaout.dense.backbone import MambaOutBackbone
from mambaout.dense.coco import (
    METRIC_KEYS,
    CocoDetection,
    coco_metrics,
    collate,
    draw_detections,
    evaluate_coco,
    predictions_to_coco,
)
from mambaout.dense.detection import (
    DEFAULT_ANCHOR_SIZES,
    LOSS_KEYS,
    MambaOutFPN,
    build_mask_rcnn,
    scaled_anchor_sizes,
)
from mambaout.dense.shapes import CATEGORY_IDS, make_shapes

pytest.importorskip("pycocotools")
mask_utils = pytest.importorskip("pycocotools.mask")

SMALL_ANCHORS = ((16,), (32,), (64,), (128,), (256,))
# Fewer proposals and detections than the COCO defaults: the test images hold at most three objects.
SMALL_HEADS = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                   rpn_post_nms_top_n_test=50, box_batch_size_per_image=64, box_detections_per_img=10)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("coco_shapes"), "coco", n_train=6, n_val=8, size=(96, 96))


@pytest.fixture(scope="module")
def val_set(shapes_root):
    return CocoDetection(shapes_root, "val2017")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_mask_rcnn(MambaOutBackbone("mambaout_test"), num_classes=3, min_size=96, max_size=160,
                           anchor_sizes=SMALL_ANCHORS, **SMALL_HEADS)


def gt_results(coco, img_ids=None):
    """Every ground-truth instance as a COCO result with score 1 (bbox and an RLE of its annToMask)."""
    results = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_ids if img_ids is not None else [])):
        rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": list(ann["bbox"]),
                        "score": 1.0, "segmentation": rle})
    return results


def gt_output(target):
    """A torchvision-style detector output that is exactly the target."""
    n = len(target["boxes"])
    return {"boxes": target["boxes"].clone(), "labels": target["labels"].clone(), "scores": torch.ones(n),
            "masks": target["masks"].float()[:, None]}


# ---------------------------------------------------------------------------------------------- dataset


def test_dataset_targets_match_json(shapes_root):
    ds = CocoDetection(shapes_root, "train2017")
    raw = json.loads((shapes_root / "annotations" / "instances_train2017.json").read_text())
    assert ds.cat_ids == list(CATEGORY_IDS)
    assert ds.class_names == ["circle", "square", "triangle"]
    assert ds.cat_to_label == {1: 1, 3: 2, 5: 3} and ds.label_to_cat == {1: 1, 2: 3, 3: 5}
    assert len(ds) == len(raw["images"])
    by_image = {}
    for ann in raw["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for i in range(len(ds)):
        image, target = ds[i]
        anns = by_image[target["image_id"]]
        assert image.dtype == torch.float32 and image.shape == (3, 96, 96)
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.2
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(anns), 96, 96)
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        torch.testing.assert_close(target["boxes"], expected, rtol=0, atol=0)
        assert [ds.label_to_cat[int(lab)] for lab in target["labels"]] == [a["category_id"] for a in anns]
        assert target["masks"].sum(dim=(1, 2)).tolist() == [a["area"] for a in anns]


def mask_extent(mask):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_hflip_moves_boxes_with_masks(shapes_root):
    plain = CocoDetection(shapes_root, "train2017", train=True, hflip=0.0)
    flipped = CocoDetection(shapes_root, "train2017", train=True, hflip=1.0)
    for i in range(3):
        (img0, t0), (img1, t1) = plain[i], flipped[i]
        torch.testing.assert_close(img1, img0.flip(-1))
        assert torch.equal(t1["masks"], t0["masks"].flip(-1))
        assert torch.equal(t1["labels"], t0["labels"])
        width = img0.shape[-1]
        torch.testing.assert_close(t1["boxes"][:, [0, 2]], width - t0["boxes"][:, [2, 0]])
        # The generated boxes are the masks' exact extents, so they must stay so after the flip.
        for box, mask in zip(t1["boxes"].tolist(), t1["masks"]):
            assert box == mask_extent(mask)


def test_train_mode_drops_crowd_and_degenerate(shapes_root, tmp_path):
    root = tmp_path / "edited"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(shapes_root / "train2017", root / "train2017")
    data = json.loads((shapes_root / "annotations" / "instances_train2017.json").read_text())
    first, second = data["images"][0]["id"], data["images"][1]["id"]
    for ann in data["annotations"]:
        if ann["image_id"] == first:
            ann["iscrowd"] = 1
        elif ann["image_id"] == second:
            ann["bbox"][2] = 0.5
    polygon_ann = next(a for a in data["annotations"] if a["image_id"] not in (first, second))
    x, y, w, h = polygon_ann["bbox"]
    polygon_ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    train, full = CocoDetection(root, "train2017", train=True), CocoDetection(root, "train2017")
    assert first not in train.ids and second not in train.ids and len(train) == len(data["images"]) - 2
    assert first in full.ids
    _, target = full[full.ids.index(first)]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 96, 96)
    # Polygon segmentations (most of real COCO) rasterise too: this one is the box itself.
    _, target = full[full.ids.index(polygon_ann["image_id"])]
    index = [a["id"] for a in full._annotations(polygon_ann["image_id"])].index(polygon_ann["id"])
    assert mask_extent(target["masks"][index]) == target["boxes"][index].tolist()
    assert abs(int(target["masks"][index].sum()) - w * h) <= w + h


def test_any_image_mode_becomes_rgb(shapes_root, tmp_path):
    from PIL import Image

    shutil.copytree(shapes_root / "annotations", tmp_path / "annotations")
    shutil.copytree(shapes_root / "val2017", tmp_path / "val2017")
    ds = CocoDetection(tmp_path, "val2017")
    path = tmp_path / "val2017" / ds.coco.imgs[ds.ids[0]]["file_name"]
    Image.open(path).convert("L").save(path.with_suffix(".png"))
    ds.coco.imgs[ds.ids[0]]["file_name"] = path.with_suffix(".png").name
    image, _ = ds[0]
    assert image.shape == (3, 96, 96) and torch.equal(image[0], image[1])


def test_missing_files_name_the_path(shapes_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train2017.json") as err:
        CocoDetection(tmp_path, "train2017")
    assert str(tmp_path) in str(err.value) and "layout" in str(err.value)
    root = tmp_path / "copy"
    shutil.copytree(shapes_root / "annotations", root / "annotations")
    with pytest.raises(FileNotFoundError, match="train2017"):
        CocoDetection(root, "train2017")
    shutil.copytree(shapes_root / "train2017", root / "train2017")
    ds = CocoDetection(root, "train2017")
    missing = root / "train2017" / ds.coco.imgs[ds.ids[1]]["file_name"]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ds[1]


def test_collate_keeps_lists(val_set):
    images, targets = collate([val_set[0], val_set[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2


# ----------------------------------------------------------------------------------------- evaluation


def test_ground_truth_scores_perfect_and_empty_scores_zero(val_set):
    metrics = coco_metrics(val_set.coco, gt_results(val_set.coco))
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(METRIC_KEYS)
        for key in ("AP", "AP50", "AP75"):
            assert metrics[iou_type][key] == pytest.approx(1.0, abs=1e-9)
    assert metrics["bbox"]["APl"] == -1  # no large (>96^2 px) objects in 96x96 images: pycocotools' "no GT"
    empty = coco_metrics(val_set.coco, [])
    assert empty == {t: dict.fromkeys(METRIC_KEYS, 0.0) for t in ("bbox", "segm")}


def test_known_perturbation_gives_hand_computed_ap(val_set):
    """Every prediction overlaps its own object with IoU ~0.72: matched at IoU thresholds 0.50..0.70 (5 of the
    10), missed at 0.75..0.95, so AP50 = 1, AP75 = 0 and AP = 5/10."""
    target_iou = 0.72
    results = gt_results(val_set.coco)
    for r in results:
        x, y, w, h = r["bbox"]
        # A box shifted right by d keeps its height: IoU = (w - d) / (w + d).
        d = w * (1 - target_iou) / (1 + target_iou)
        r["bbox"] = [x + d, y, w, h]
        assert mask_utils.iou([r["bbox"]], [[x, y, w, h]], [0])[0, 0] == pytest.approx(target_iou, abs=1e-9)
        # Keep the first ceil(0.72 A) mask pixels (column-major): a subset, so IoU = kept / A, just above 0.72.
        mask = mask_utils.decode(r["segmentation"])
        flat = mask.flatten(order="F")
        keep = math.ceil(target_iou * flat.sum())
        flat[np.flatnonzero(flat)[keep:]] = 0
        sub = mask_utils.encode(np.asfortranarray(flat.reshape(mask.shape, order="F")))
        iou = mask_utils.iou([sub], [r["segmentation"]], [0])[0, 0]
        assert 0.70 < iou < 0.75
        sub["counts"] = sub["counts"].decode("ascii")
        r["segmentation"] = sub
    metrics = coco_metrics(val_set.coco, results)
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert m["AP50"] == pytest.approx(1.0, abs=1e-6)
        assert m["AP75"] == pytest.approx(0.0, abs=1e-6)
        assert m["AP"] == pytest.approx(0.5, abs=1e-6)


def test_eval_restricted_to_given_images(val_set):
    """Detections for half the images, evaluated on that half only, are perfect; on all images they miss."""
    half = val_set.ids[: len(val_set.ids) // 2]
    results = gt_results(val_set.coco, half)
    assert coco_metrics(val_set.coco, results, img_ids=half)["bbox"]["AP"] == pytest.approx(1.0)
    assert coco_metrics(val_set.coco, results)["bbox"]["AP"] < 0.9


def test_predictions_to_coco_round_trip(val_set):
    outputs, ids = [], []
    for i in range(len(val_set)):
        _, target = val_set[i]
        outputs.append(gt_output(target))
        ids.append(target["image_id"])
    results = predictions_to_coco(outputs, ids, val_set.label_to_cat)
    assert len(results) == len(val_set.coco.getAnnIds())
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    json.dumps(results)  # results must be writable as a COCO results file
    metrics = coco_metrics(val_set.coco, results)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0, abs=1e-9)
    boxes_only = [{k: v for k, v in o.items() if k != "masks"} for o in outputs]
    no_masks = coco_metrics(val_set.coco, predictions_to_coco(boxes_only, ids, val_set.label_to_cat))
    assert no_masks["bbox"]["AP"] == pytest.approx(1.0) and no_masks["segm"]["AP"] == 0.0


class GroundTruthModel(torch.nn.Module):
    """Answers each image with its own ground truth (looked up by the image's bytes); records what it saw."""

    def __init__(self, dataset):
        super().__init__()
        self.answers = {}
        for i in range(len(dataset)):
            image, target = dataset[i]
            self.answers[self._key(image)] = (target["image_id"], gt_output(target))
        self.seen = []

    @staticmethod
    def _key(image):
        return hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest()

    def forward(self, images):
        assert not self.training and not torch.is_grad_enabled()
        found = [self.answers[self._key(img)] for img in images]
        self.seen += [image_id for image_id, _ in found]
        return [output for _, output in found]


def test_evaluate_coco_is_exact_with_a_perfect_model(val_set, shapes_root):
    with pytest.raises(ValueError, match="train=False"):
        evaluate_coco(GroundTruthModel(val_set), CocoDetection(shapes_root, "val2017", train=True))
    model = GroundTruthModel(val_set).train()
    metrics = evaluate_coco(model, val_set, batch_size=3)
    assert sorted(model.seen) == sorted(val_set.ids)
    assert model.training  # the caller's mode comes back
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0, abs=1e-9)


def _distributed_eval(rank, world_size, root, store, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        ds = CocoDetection(root, "val2017")
        model = GroundTruthModel(ds)
        metrics = evaluate_coco(model, ds, batch_size=2)
        (out_dir / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "seen": model.seen}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_shards_unevenly_and_agrees(tmp_path):
    """7 images over 2 processes: every image is evaluated exactly once (4 + 3), none padded or repeated."""
    root = make_shapes(tmp_path / "odd", "coco", n_train=1, n_val=7, size=(64, 64))
    # A file store rather than a TCP port: no port to race for.
    run_forked(_distributed_eval, (2, root, tmp_path / "store", tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen = [r["seen"] for r in ranks]
    assert sorted(map(len, seen)) == [3, 4] and len(set(seen[0] + seen[1])) == 7
    assert set(seen[0] + seen[1]) == set(CocoDetection(root, "val2017").ids)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert ranks[0]["metrics"]["segm"]["AP"] == pytest.approx(1.0)
    assert ranks[0]["metrics"]["bbox"]["AP"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- model


def test_fpn_levels():
    fpn = MambaOutFPN(MambaOutBackbone("mambaout_test"))
    assert fpn.out_channels == 256 and isinstance(fpn.backbone, MambaOutBackbone)
    with torch.no_grad():
        feats = fpn(torch.randn(1, 3, 128, 192))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    for feat, stride in zip(feats.values(), (4, 8, 16, 32, 64)):
        assert feat.shape == (1, 256, 128 // stride, 192 // stride)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="background"):
        build_mask_rcnn(MambaOutBackbone("mambaout_test"), num_classes=0)
    with pytest.raises(ValueError, match="one entry per FPN level"):
        build_mask_rcnn(MambaOutBackbone("mambaout_test"), num_classes=3, anchor_sizes=((32,), (64,)))
    assert scaled_anchor_sizes(800) == DEFAULT_ANCHOR_SIZES
    assert scaled_anchor_sizes(200) == ((8,), (16,), (32,), (64,), (128,))


def test_train_step_losses_reach_the_stem(model, shapes_root):
    ds = CocoDetection(shapes_root, "train2017", train=True)
    images, targets = collate([ds[0], ds[1]])
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(images, targets)
    assert set(losses) == set(LOSS_KEYS)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    grad = model.backbone.backbone.body.stem.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_eval_outputs_at_input_size(model, val_set):
    images = [val_set[0][0], val_set[1][0][:, :, :72]]  # a second, narrower image: outputs follow each input
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for image, out in zip(images, outputs):
        n = len(out["boxes"])
        assert 0 < n <= SMALL_HEADS["box_detections_per_img"]
        assert out["boxes"].shape == (n, 4) and out["labels"].shape == out["scores"].shape == (n,)
        assert out["masks"].shape == (n, 1, *image.shape[-2:])
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3


def test_evaluate_coco_untrained_model(model, shapes_root):
    ds = CocoDetection(shapes_root, "val2017")
    ds.ids = ds.ids[:3]
    metrics = evaluate_coco(model, ds, batch_size=2, amp=True)  # bf16 autocast on CPU
    assert set(metrics) == {"bbox", "segm"}
    for values in metrics.values():
        assert set(values) == set(METRIC_KEYS)
        assert all(-1.0 <= v <= 1.0 for v in values.values())


def test_draw_detections(val_set):
    from PIL import Image

    image, target = val_set[0]
    pil = Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())
    prediction = gt_output(target)
    drawn = draw_detections(pil, prediction, val_set.class_names, score_threshold=0.5)
    assert drawn.size == pil.size and drawn.mode == "RGB"
    assert np.abs(np.asarray(drawn, dtype=int) - np.asarray(pil, dtype=int)).sum() > 0
    prediction["scores"] = torch.full_like(prediction["scores"], 0.2)
    below = draw_detections(pil, prediction, val_set.class_names, score_threshold=0.5)
    assert np.array_equal(np.asarray(below), np.asarray(pil))
