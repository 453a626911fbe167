"""Training configuration: typed defaults < recipe file < command-line flags.

A recipe is a YAML file holding only the settings that differ from the defaults: a packaged one by name
(``--recipe mambaout_tiny``, ``--recipe quickstart``) or any file by path. The resolved configuration is plain
data, written beside the logs and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .models.zoo import IMAGENET_MEAN, IMAGENET_STD


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and the value."""


class ConfigBase:
    """Plain-data behaviour shared by every configuration dataclass (classification, detection, segmentation)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def checks(self) -> list[tuple[bool, str, str]]:
        """(condition, setting, what it must be) triples; a failed one becomes a ConfigError."""
        return []


@dataclass
class TrainConfig(ConfigBase):
    # what to train, on what
    model: str = "mambaout_tiny"
    data_dir: str = ""
    output: str = "runs/train"
    num_classes: int | None = None  # default: the number of class folders
    pretrained: bool = False
    checkpoint: str | None = None  # initial weights (fine-tuning); not a resume
    resume: str | None = None  # a checkpoint of this trainer to continue from
    # schedule and optimiser (DeiT recipe, as the paper)
    epochs: int = 300
    warmup_epochs: int = 20
    batch_size: int = 128  # per device
    global_batch_size: int | None = None  # default: batch_size x world size (no accumulation)
    lr: float | None = None  # default: lr_base * global_batch_size / lr_base_size
    lr_base: float = 1e-3
    lr_base_size: int = 1024
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    opt_betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    # regularisation and augmentation
    drop_path: float = 0.1
    drop_rate: float = 0.0
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    hflip: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    img_size: int = 224
    crop_pct: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # machinery
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    grad_checkpointing: bool = False
    workers: int = 4
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    log_interval: int = 20  # optimiser steps between plain log lines (non-interactive output)
    eval_interval: int = 1  # epochs between evaluations
    stop_after: int | None = None  # end the run after this many epochs of this invocation (resume later)
    strict_data: bool = False  # fail on an unreadable image instead of skipping it with a warning
    nonfinite: str = "stop"  # a NaN/inf loss: stop (keeping the last good checkpoint) | skip the step and count it
    recipe: str | None = None

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.nonfinite in ("stop", "skip"), "nonfinite", "stop or skip"),
            (self.amp in ("none", "bf16", "fp16"), "amp", "one of none, bf16, fp16"),
            (self.device in ("auto", "cpu", "cuda"), "device", "one of auto, cpu, cuda"),
            (self.epochs > 0, "epochs", "a positive number"),
            (self.batch_size > 0, "batch_size", "a positive number"),
            (self.global_batch_size is None or self.global_batch_size > 0, "global_batch_size",
             "a positive number"),
            (self.img_size >= 32, "img_size", "at least 32 (the network downsamples 32×)"),
            (0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", f"between 0 and epochs ({self.epochs})"),
            (0.0 <= self.drop_path < 1.0, "drop_path", "in [0, 1)"),
            (0.0 <= self.smoothing < 1.0, "smoothing", "in [0, 1)"),
            (self.lr is None or self.lr > 0, "lr", "a positive number"),
            (self.workers >= 0, "workers", "0 or more"),
            (self.stop_after is None or self.stop_after > 0, "stop_after", "a positive number"),
        ]


def _recipe_path(recipe: str) -> Path:
    try:
        path = Path(recipe)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise ConfigError(f"recipe file not found: {path}")
            return path
        packaged = resources.files("mambaout") / "recipes" / f"{recipe}.yaml"
        if not packaged.is_file():
            raise ConfigError(f"unknown recipe {recipe!r}; packaged recipes: {', '.join(list_recipes())}")
    except ConfigError:
        raise
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte, ...
        raise ConfigError(f"recipe {recipe!r} is not a usable name or path: {e}") from None
    return Path(str(packaged))


def list_recipes() -> list[str]:
    folder = resources.files("mambaout") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(recipe: str) -> dict[str, Any]:
    import yaml

    path = _recipe_path(recipe)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {path} cannot be read as UTF-8 text: {e}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        # One line, as the CLI prints it: the problem and where, without PyYAML's multi-line excerpt.
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(e, "problem", None) or (str(e).strip().splitlines() or ["syntax error"])[0]
        raise ConfigError(f"recipe {path} is not valid YAML: {what}{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of setting: value, got {type(data).__name__}")
    return data


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Check and convert one value to its field's type; the error names the setting and the value."""
    if value is None:
        if type(None) in get_args(hint):
            return None
        raise ConfigError(f"setting {name!r} cannot be empty")
    args = [a for a in get_args(hint) if a is not type(None)]
    base = args[0] if get_origin(hint) is not tuple and args else hint
    if get_origin(base) is tuple:
        items = get_args(base)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ConfigError(f"setting {name!r} needs {len(items)} numbers, got {value!r}")
        return tuple(_coerce(name, t, v) for t, v in zip(items, value))
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"setting {name!r} expects {getattr(base, '__name__', base)}, got {value!r}") from None
    return value


def resolve_config(overrides: dict[str, Any] | None = None, recipe: str | None = None, cls: type = TrainConfig):
    """Defaults of ``cls``, then the recipe (``overrides['recipe']`` or ``recipe``), then ``overrides``
    (None = unset)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    recipe = overrides.get("recipe", recipe)
    if recipe is not None and not isinstance(recipe, (str, os.PathLike)):
        raise ConfigError(f"setting 'recipe' expects a recipe name or a YAML path, got {recipe!r}")
    hints = get_type_hints(cls)
    merged: dict[str, Any] = {}
    if recipe:
        for key, value in load_recipe(recipe).items():
            if key not in hints:
                raise ConfigError(f"recipe {recipe!r}: unknown setting {key!r}")
            merged[key] = value
    merged.update(overrides)
    merged["recipe"] = recipe
    unknown = sorted(map(str, set(merged) - set(hints)))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    cfg = cls(**{k: _coerce(k, hints[k], v) for k, v in merged.items()})
    validate(cfg)
    return cfg


def validate(cfg: ConfigBase) -> None:
    try:
        checks = cfg.checks()
    except (ArithmeticError, TypeError, ValueError) as e:  # e.g. an epoch count too large to schedule in floats
        raise ConfigError(f"settings out of range: {e}") from None
    for ok, name, want in checks:
        if not ok:
            raise ConfigError(f"setting {name!r} must be {want}, got {getattr(cfg, name)!r}")


def replace(cfg, **changes):
    out = dataclasses.replace(cfg, **changes)
    validate(out)
    return out


__all__ = ["ConfigBase", "ConfigError", "TrainConfig", "list_recipes", "load_recipe", "resolve_config"]
