"""ADE20K (SceneParsing, 150 classes) for UperNet: the dataset with the paper's train and test pipelines, the mIoU
meter, the evaluation loop (single- or multi-scale, whole or sliding window, one process or many), and colour
maps for showing predictions.

Labels follow the ADEChallengeData2016 convention: 0 is "other/unlabelled" and 1..150 are classes, so with
``reduce_zero_label`` 0 becomes the ignore value 255 and k becomes k - 1.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.safe import BadSampleLog, ImageLoadError, collate_skip, open_image
from ..engine import distributed as D
from ..models.zoo import IMAGENET_MEAN, IMAGENET_STD
from ..utils.amp import autocast
from ..utils.progress import Progress
from .segmentation import IGNORE_INDEX, fit_size, predict_probs

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ADE_LAYOUT = ("expected the ADEChallengeData2016 layout: ROOT/images/{training,validation}/NAME.jpg with "
              "ROOT/annotations/{training,validation}/NAME.png")

# Photometric distortion (applied to the 0-255 RGB crop, each part with probability 1/2).
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA_DEGREES = 36.0  # mmseg's hue_delta 18 is on OpenCV's 0-180 hue scale, i.e. ±36°


def _uniform(low: float, high: float) -> float:
    # torch's RNG, which DataLoader seeds differently in every worker.
    return low + (high - low) * torch.rand(()).item()


def _randint(high_inclusive: int) -> int:
    return int(torch.randint(0, high_inclusive + 1, ()).item())


def _chance(p: float) -> bool:
    return p > 0 and torch.rand(()).item() < p


def shift_labels(raw: np.ndarray, reduce_zero_label: bool = True) -> np.ndarray:
    """int64 class indices: with the zero-label shift 0 -> 255 (ignored), k -> k - 1, and 255 stays 255."""
    labels = raw.astype(np.int64)
    if not reduce_zero_label:
        return labels
    out = labels - 1
    out[(labels == 0) | (labels == IGNORE_INDEX)] = IGNORE_INDEX
    return out


def random_crop_box(label: np.ndarray, crop_size: Sequence[int], cat_max_ratio: float = 0.75,
                    ignore_index: int = IGNORE_INDEX, tries: int = 10) -> tuple[int, int]:
    """(top, left) of a random crop of at most crop_size (h, w) inside ``label``.

    With cat_max_ratio < 1 a crop is re-drawn (``tries`` times at most, then the last draw is kept) while it holds
    fewer than two classes or one class covers cat_max_ratio or more of its labelled pixels, so crops are not
    mostly sky or wall.
    """
    crop_h, crop_w = crop_size
    max_top, max_left = max(label.shape[0] - crop_h, 0), max(label.shape[1] - crop_w, 0)
    top, left = _randint(max_top), _randint(max_left)
    if cat_max_ratio >= 1:
        return top, left
    for _ in range(tries):
        values, counts = np.unique(label[top:top + crop_h, left:left + crop_w], return_counts=True)
        counts = counts[values != ignore_index]
        if len(counts) > 1 and counts.max() < cat_max_ratio * counts.sum():
            break
        top, left = _randint(max_top), _randint(max_left)
    return top, left


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 float RGB (any range) -> hue in degrees [0, 360), saturation in [0, 1], value in RGB's range."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = rgb.max(-1), rgb.min(-1)
    delta = maxc - minc
    sat = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1), 0)
    safe = np.where(delta > 0, delta, 1)
    hue = np.where(maxc == r, (g - b) / safe, np.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = np.where(delta > 0, (hue * 60) % 360, 0)
    return np.stack([hue, sat, maxc], axis=-1).astype(rgb.dtype)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """The inverse of ``rgb_to_hsv``."""
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    channels = []
    for n in (5, 3, 1):  # R, G, B: the piecewise-linear hue ramps, shifted by 120 degrees each
        k = (n + hue / 60) % 6
        channels.append(val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1))
    return np.stack(channels, axis=-1).astype(hsv.dtype)


def photometric_distortion(image: np.ndarray) -> np.ndarray:
    """Random brightness, contrast, saturation and hue of an H x W x 3 RGB array (0-255); float32 out.

    Each part is applied with probability 1/2; contrast goes before or after the colour (HSV) parts at random.
    """
    out = image.astype(np.float32)
    if _chance(0.5):
        out = np.clip(out + _uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA), 0, 255)
    contrast_first = _chance(0.5)
    if contrast_first and _chance(0.5):
        out = np.clip(out * _uniform(*CONTRAST_RANGE), 0, 255)
    saturate, shift_hue = _chance(0.5), _chance(0.5)
    if saturate or shift_hue:
        hsv = rgb_to_hsv(out)
        if saturate:
            hsv[..., 1] = np.clip(hsv[..., 1] * _uniform(*SATURATION_RANGE), 0, 1)
        if shift_hue:
            hsv[..., 0] = (hsv[..., 0] + _uniform(-HUE_DELTA_DEGREES, HUE_DELTA_DEGREES)) % 360
        out = np.clip(hsv_to_rgb(hsv), 0, 255)
    if not contrast_first and _chance(0.5):
        out = np.clip(out * _uniform(*CONTRAST_RANGE), 0, 255)
    return out


def normalize_image(image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """PIL image or H x W x 3 array (0-255 RGB) -> float32 tensor 3 x H x W normalised on the [0, 1] scale."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


def prepare_test_image(image: Image.Image, scale: Sequence[float] = (2048, 512),
                       mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """The test pipeline for one picture: RGB, keep-ratio resize to fit ``scale``, normalise (3 x h x w)."""
    image = image.convert("RGB")
    height, width = fit_size(image.height, image.width, scale)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.BILINEAR)
    return normalize_image(image, mean, std)


def _shown(paths: Sequence, limit: int = 5) -> str:
    return ", ".join(map(str, paths[:limit])) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _find_pairs(root: Path, split: str, strict: bool = False) -> tuple[list[Path], list[Path]]:
    """Every image of the split with its label file; an image without a label is an error. A label without an
    image is a warning (an error when ``strict``): it often means an image with a suffix this loader skips."""
    image_dir, label_dir = root / "images" / split, root / "annotations" / split
    missing_dirs = [str(d) for d in (image_dir, label_dir) if not d.is_dir()]
    if missing_dirs:
        raise FileNotFoundError(f"ADE20K folder(s) not found: {', '.join(missing_dirs)} ({ADE_LAYOUT})")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"no images (.jpg/.jpeg/.png) in {image_dir}: the '{split}' split is empty ({ADE_LAYOUT})")
    labels = [label_dir / (p.stem + ".png") for p in images]
    missing = [str(p) for p in labels if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) in {image_dir} have no label file: {_shown(missing)} "
                                f"({ADE_LAYOUT})")
    stems = {p.stem for p in images}
    orphans = sorted(str(p) for p in label_dir.iterdir() if p.suffix.lower() == ".png" and p.stem not in stems)
    if orphans:
        msg = (f"{len(orphans)} label file(s) in {label_dir} have no image ({'/'.join(IMAGE_SUFFIXES)}) in "
               f"{image_dir}: {_shown(orphans)}")
        if strict:
            raise FileNotFoundError(f"{msg} ({ADE_LAYOUT})")
        warnings.warn(f"{msg}; those labels are not used", stacklevel=3)
    return images, labels


class AdeSegmentation(Dataset):
    """ADE20K-layout semantic segmentation: ``root/images/{split}/X.jpg`` with ``root/annotations/{split}/X.png``.

    train=True: keep-ratio resize to fit ``scale`` x a random ratio in ``ratio_range``, a random ``crop_size``
    crop (re-drawn while one class covers ``cat_max_ratio`` of it), horizontal flip with probability ``hflip``,
    photometric distortion, normalisation, and padding to the crop (image 0, label 255). Returns an image
    3 x crop_h x crop_w and an int64 label crop_h x crop_w, so items stack into batches.
    train=False: the image resized keeping its ratio to fit ``scale`` and normalised, with the int64 label at the
    ORIGINAL size (sizes vary: evaluate one image at a time; predictions are resized back to the label).
    An item is ``None`` when its image or label file cannot be decoded, after one warning naming the file (batch
    with ``collate``); ``strict=True`` raises ``DataFileError`` instead, and also refuses label files without an
    image.
    """

    def __init__(self, root, split: str = "training", train: bool = False, crop_size: int | Sequence[int] = 512,
                 scale: Sequence[float] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0), hflip: float = 0.5,
                 cat_max_ratio: float = 0.75, reduce_zero_label: bool = True, num_classes: int = 150,
                 class_names: Sequence[str] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, strict: bool = False):
        if not 0 < num_classes <= IGNORE_INDEX:
            raise ValueError(f"num_classes must be in 1..{IGNORE_INDEX} (255 is the ignore value), got {num_classes}")
        if class_names is None:
            class_names = ADE20K_CLASSES if num_classes == len(ADE20K_CLASSES) else \
                [f"class_{k}" for k in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
        self.root = Path(root)
        self.split = split
        self.files, self.label_files = _find_pairs(self.root, split, strict)
        self.bad_samples = BadSampleLog(strict)
        self.train = train
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(int(c) for c in crop_size)
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)
        self.hflip = hflip
        self.cat_max_ratio = cat_max_ratio
        self.reduce_zero_label = reduce_zero_label
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.files)

    @property
    def strict(self) -> bool:
        return self.bad_samples.strict

    def bad_files(self) -> list[str]:
        """The image and label files skipped so far (by this process or its DataLoader workers)."""
        return self.bad_samples.files()

    def load_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The picture (RGB, original size) and its class-index map (uint8 H x W, shifted; 255 = ignore).
        ``ImageLoadError`` naming the file when either cannot be decoded."""
        path, label_path = self.files[index], self.label_files[index]
        with open_image(path) as im:
            image = im.convert("RGB")
        with open_image(label_path) as im:
            raw = np.array(im)
        if raw.ndim != 2:
            raise ValueError(f"{label_path}: a label must be a single-channel class-index PNG, got shape {raw.shape}")
        if raw.shape != (image.height, image.width):
            raise ValueError(f"{label_path} is {raw.shape[1]}x{raw.shape[0]} but {path} is "
                             f"{image.width}x{image.height}")
        label = shift_labels(raw, self.reduce_zero_label)
        bad = label[(label != IGNORE_INDEX) & ((label >= self.num_classes) | (label < 0))]
        if bad.size:
            raise ValueError(f"{label_path}: label value {int(bad.max())} (after the zero-label shift: "
                             f"{self.reduce_zero_label}) is not a class of num_classes={self.num_classes}")
        return image, label.astype(np.uint8)

    def _pair_or_none(self, index: int) -> tuple[Image.Image, np.ndarray] | None:
        try:
            return self.load_pair(index)
        except ImageLoadError as e:
            return self.bad_samples.report(e.path, e)

    def eval_item(self, index: int, resize: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Normalised image (fitted to ``scale`` when ``resize``, else at its original size) and int64 label;
        ``None`` when a file of the pair cannot be read (see the class notes)."""
        pair = self._pair_or_none(index)
        if pair is None:
            return None
        image, label = pair
        x = prepare_test_image(image, self.scale, self.mean, self.std) if resize else \
            normalize_image(image, self.mean, self.std)
        return x, torch.from_numpy(label.astype(np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.train:
            return self.eval_item(index)
        pair = self._pair_or_none(index)
        if pair is None:
            return None
        image, label = pair
        ratio = _uniform(*self.ratio_range)
        height, width = fit_size(image.height, image.width, (self.scale[0] * ratio, self.scale[1] * ratio))
        image = np.asarray(image.resize((width, height), Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
        crop_h, crop_w = self.crop_size
        top, left = random_crop_box(label, self.crop_size, self.cat_max_ratio, IGNORE_INDEX)
        image = image[top:top + crop_h, left:left + crop_w]
        label = label[top:top + crop_h, left:left + crop_w]
        if _chance(self.hflip):
            image, label = image[:, ::-1], label[:, ::-1]
        x = normalize_image(photometric_distortion(image), self.mean, self.std)
        y = torch.from_numpy(label.astype(np.int64))
        pad_h, pad_w = crop_h - x.shape[1], crop_w - x.shape[2]
        if pad_h or pad_w:
            # Zero is the mean colour after normalisation; padded label pixels are ignored by the loss.
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            y = torch.nn.functional.pad(y, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return x, y


def collate(batch):
    """``default_collate`` of the items that are not ``None`` (skipped files); ``None`` when none is left."""
    return collate_skip(batch)


class IoUMeter:
    """Confusion histogram (rows: ground truth, columns: prediction) over all evaluated pixels; pixels labelled
    ``ignore_index`` are skipped. ``compute`` gives mIoU / aAcc / mAcc as fractions (0..1)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, class_names: Sequence[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [f"class_{k}" for k in
                                                                               range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for num_classes={num_classes}")
        self.hist = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.hist.zero_()

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        pred, label = torch.as_tensor(pred), torch.as_tensor(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
        label = label.to(pred.device).long()
        keep = label != self.ignore_index
        pred, label = pred[keep].long(), label[keep]
        k = self.num_classes
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= k):
            raise ValueError(f"label values must be in 0..{k - 1} or {self.ignore_index}")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
            raise ValueError(f"predictions must be in 0..{k - 1}")
        self.hist += torch.bincount(label * k + pred, minlength=k * k).view(k, k).cpu()

    def all_reduce(self) -> None:
        """Sum the histogram over all processes (a no-op when torch.distributed is not initialised)."""
        self.hist = D.all_reduce_tensor(self.hist, D.current())

    def compute(self) -> dict:
        """Per-class IoU = TP / (TP + FP + FN); a class with an empty union is None and left out of the mean.
        Everything is NaN when no pixel has been counted."""
        hist = self.hist.double()
        tp = hist.diag()
        gt, predicted = hist.sum(1), hist.sum(0)
        union = gt + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
        total = hist.sum()

        def nanmean(v: torch.Tensor) -> float:
            valid = ~torch.isnan(v)
            return float(v[valid].mean()) if valid.any() else float("nan")

        return {
            "mIoU": nanmean(iou),
            "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mAcc": nanmean(acc),
            "per_class": {name: (None if torch.isnan(v) else float(v)) for name, v in zip(self.class_names, iou)},
        }


@torch.no_grad()
def evaluate_segmentation(model, dataset, device="cpu", mode: str = "whole", crop_size: int | Sequence[int] = 512,
                          stride: int | Sequence[int] = 341, scales: Sequence[float] = (1.0,), flip: bool = False,
                          amp: bool | str = False, progress: bool = False) -> dict:
    """mIoU / aAcc / mAcc / per-class IoU of ``model`` on an eval ``AdeSegmentation`` (see ``IoUMeter.compute``).

    Predictions are made at the test scale and resized back to each original label. With scales other than
    (1.0,) every ratio resizes the original image to fit ``dataset.scale`` x ratio. Under torch.distributed
    rank r takes images r, r + world, ... and the histograms are summed, so every rank returns the same numbers.
    amp: as ``mambaout.utils.amp.autocast`` takes it (True: bf16 on CPU, fp16 on CUDA); softmax and resizing stay
    in float32.
    Pairs whose files cannot be read are left out and, when there are any, counted in an extra key ``skipped``.
    """
    device = torch.device(device)
    info = D.current()
    rank, world = info.rank, info.world_size
    meter = IoUMeter(dataset.num_classes, IGNORE_INDEX, dataset.class_names)
    multi_scale = tuple(scales) != (1.0,)
    indices = range(rank, len(dataset), world)
    bar = Progress(len(indices), "segment eval", None, progress and rank == 0)
    was_training = model.training
    model.eval()
    skipped = 0
    try:
        for i in indices:
            item = dataset.eval_item(i, resize=not multi_scale)
            if item is None:
                skipped += 1
                bar.tick()
                continue
            image, label = item
            image, label = image.unsqueeze(0).to(device), label.to(device)
            with autocast(amp, device):
                probs = predict_probs(model, image, label.shape[-2:], scales=scales, flip=flip,
                                      base_scale=dataset.scale if multi_scale else None, mode=mode,
                                      crop_size=crop_size, stride=stride)
            meter.update(probs.argmax(1)[0], label)
            bar.tick()
    finally:
        model.train(was_training)
        bar.close()
    meter.all_reduce()
    result = meter.compute()
    skipped = int(D.all_reduce_sum([skipped], info)[0])
    if skipped:
        result["skipped"] = skipped
    return result


def palette(num_classes: int) -> np.ndarray:
    """K x 3 uint8 colours, distinct by construction: the bits of k + 1 are dealt round-robin into the high bits
    of R, G and B (so neighbouring classes differ strongly and black stays free for ignored pixels)."""
    if not 0 <= num_classes < 2 ** 24:
        raise ValueError(f"palette supports 0..{2 ** 24 - 1} classes, got {num_classes}")
    code = np.arange(1, num_classes + 1, dtype=np.int64)
    colours = np.zeros((num_classes, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((code >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def _label_array(label_map) -> np.ndarray:
    if isinstance(label_map, torch.Tensor):
        label_map = label_map.detach().cpu().numpy()
    arr = np.asarray(label_map)
    if arr.ndim != 2:
        raise ValueError(f"a label map must be H x W, got shape {arr.shape}")
    return arr.astype(np.int64)


def colorize(label_map, num_classes: int | None = None) -> Image.Image:
    """RGB picture of an H x W class-index map; 255 (ignored) and values outside 0..K-1 are black."""
    arr = _label_array(label_map)
    if num_classes is None:
        valid = arr[(arr >= 0) & (arr != IGNORE_INDEX)]
        num_classes = int(valid.max()) + 1 if valid.size else 0
    colours = np.concatenate([palette(num_classes), np.zeros((1, 3), np.uint8)])
    index = np.where((arr >= 0) & (arr < num_classes) & (arr != IGNORE_INDEX), arr, num_classes)
    return Image.fromarray(colours[index])


def blend(image: Image.Image, label_map, alpha: float = 0.5, num_classes: int | None = None) -> Image.Image:
    """``image`` with the colour map laid over it (resized to the image with nearest neighbour); ignored pixels
    show the image unchanged."""
    image = image.convert("RGB")
    arr = _label_array(label_map)
    colour = colorize(arr, num_classes)
    valid = Image.fromarray(((arr >= 0) & (arr != IGNORE_INDEX)).astype(np.uint8) * 255)
    if colour.size != image.size:
        colour = colour.resize(image.size, Image.NEAREST)
        valid = valid.resize(image.size, Image.NEAREST)
    base = np.asarray(image, dtype=np.float32)
    mixed = base * (1 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    out = np.where(np.asarray(valid)[..., None] > 0, mixed, base)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
