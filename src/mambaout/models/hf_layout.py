"""Folders in timm's Hugging Face hub layout: ``config.json`` beside ``model.safetensors``.

``config.json`` holds timm's keys (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
``label_names``, ``model_args``, ``pretrained_cfg``), so ``timm.create_model("local-dir:DIR")``,
``timm.create_model("hf-hub:org/name")`` and transformers' ``TimmWrapper`` read it; the keywords of ours that
timm's constructors do not take (a lab model's mixer settings, for one) go under :data:`OUR_KEY`, which timm
ignores. ``mambaout.create_model`` reads folders written by :func:`mambaout.save_pretrained`, by timm's
``save_for_hf`` and timm's own published repositories alike.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .hub import DownloadError, hub_download
from .weights import CheckpointError

PREFIXES = ("local-dir:", "hf-hub:")
CONFIG_NAME = "config.json"
# timm's order of preference; the pickle ones are read with weights_only=True like every other checkpoint.
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
OUR_KEY = "mambaout"


def is_folder_source(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIXES)


def split_source(name: str) -> tuple[str, str, str | None]:
    """``(kind, where, revision)`` of ``local-dir:PATH`` or ``hf-hub:org/name[@revision]``."""
    kind, _, where = name.partition(":")
    revision = None
    if kind == "hf-hub" and "@" in where:
        where, revision = where.split("@", 1)
    if not where:
        raise ValueError(f"{name!r} names no {'folder' if kind == 'local-dir' else 'repository'} after '{kind}:'")
    return kind, where, revision


def fetch_folder(name: str) -> tuple[dict[str, Any], Path, str]:
    """The parsed ``config.json``, the weights file and a name for messages, of a folder source."""
    kind, where, revision = split_source(name)
    if kind == "local-dir":
        folder = Path(where).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"local-dir: {folder} is not a folder")
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise CheckpointError(f"local-dir: {folder} has no {CONFIG_NAME} (timm's hub layout: {CONFIG_NAME} "
                                  f"beside model.safetensors)")
        weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"local-dir: {folder} has {CONFIG_NAME} but no weights ({', '.join(WEIGHT_NAMES)})")
        return read_config(config_path), weights, str(folder)
    config_path = hub_download(where, CONFIG_NAME, revision=revision)
    config = read_config(config_path, label=f"{where}/{CONFIG_NAME}")
    errors = []
    for weights_name in WEIGHT_NAMES[:2]:
        try:
            return config, hub_download(where, weights_name, revision=revision), where
        except DownloadError as e:
            errors.append(str(e))
    raise DownloadError(errors[0] + f" (nor {WEIGHT_NAMES[1]})")


def read_config(path: Path, label: str | None = None) -> dict[str, Any]:
    label = label or str(path)
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{label} is not readable JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{label} holds a {type(config).__name__}, not an object")
    return config


def parse_config(config: dict[str, Any], where: str) -> tuple[str, int | None, dict[str, Any], dict[str, Any]]:
    """``(architecture, num_classes, pretrained_cfg, model_args)`` of a timm-layout ``config.json``; timm's legacy
    single-dict layout (everything at the top, ``labels`` for the class names) is read too."""
    from .zoo import VARIANTS

    if "pretrained_cfg" not in config:
        pretrained = {k: v for k, v in config.items() if k not in ("architecture", "num_features", OUR_KEY)}
        config = {**config, "pretrained_cfg": pretrained}
        if "labels" in pretrained:
            pretrained["label_names"] = pretrained.pop("labels")
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{where}/{CONFIG_NAME} has no 'architecture'")
    if arch not in VARIANTS:
        raise CheckpointError(f"{where}/{CONFIG_NAME}: architecture {arch!r} is not a model this package builds "
                              "(mambaout list)")
    cfg = dict(config["pretrained_cfg"]) if isinstance(config["pretrained_cfg"], dict) else {}
    for key in ("label_names", "label_descriptions"):
        if key in config:
            cfg[key] = config[key]
    num_classes = config.get("num_classes", cfg.get("num_classes"))
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 0):
        raise CheckpointError(f"{where}/{CONFIG_NAME}: num_classes must be a whole number, got {num_classes!r}")
    ours = config.get(OUR_KEY) if isinstance(config.get(OUR_KEY), dict) else {}
    model_args = {**(config.get("model_args") or {}), **(ours.get("model_args") or {})}
    for key in ("input_size", "test_input_size", "min_input_size", "pool_size", "mean", "std"):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    cfg.pop("file", None)
    cfg.pop("source", None)
    cfg["architecture"] = arch
    return arch, num_classes, cfg, model_args
