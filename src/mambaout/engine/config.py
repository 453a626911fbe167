"""Run configuration: typed defaults < recipe file < command-line flags.

``RunConfig`` holds the settings every training task shares; a task's config (``TrainConfig``, ``DetectConfig``,
``SegmentConfig``) adds only its own. Each field's metadata carries its help text (``setting``), from which the
command line builds its flags, so a flag and its recipe key cannot drift apart.

A recipe is a YAML file holding only the settings that differ from the defaults: a packaged one by name
(``--recipe mambaout_tiny``, ``--recipe quickstart``) or any file by path. The resolved configuration is plain
data, written beside the logs and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from ..utils.errors import ConfigError


def setting(default: Any, help: str | None = None, *, choices: tuple | None = None, unset: str | None = None,
            off: str | None = None, flag: str | None = None) -> Any:
    """A config field: ``help`` (with ``{unit}`` for the task's schedule unit) makes it a command-line flag;
    ``choices`` lists the accepted values, ``unset`` says what a None default means, ``off`` is the flag word that
    clears an optional setting (``--auto-augment none``), and ``flag`` a flag spelling other than the field's."""
    meta = {k: v for k, v in dict(help=help, choices=choices, unset=unset, off=off, flag=flag).items()
            if v is not None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def default(base: type, name: str, value: Any, **changes: Any) -> Any:
    """``base``'s field ``name`` with another default (a task's own), keeping its help unless ``changes`` say."""
    return setting(value, **{**base.__dataclass_fields__[name].metadata, **changes})


def _one_of(choices: tuple) -> str:
    words = [str(c) for c in choices]
    return " or ".join(words) if len(words) == 2 else "one of " + ", ".join(words)


class ConfigBase:
    """Plain-data behaviour shared by every configuration dataclass (classification, detection, segmentation)."""

    unit = "epochs"  # what the schedule counts: the unit of stop_after and eval_interval

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def checks(self) -> list[tuple[bool, str, str]]:
        """(condition, setting, what it must be) triples; a failed one becomes a ConfigError."""
        return [(getattr(self, f.name) in f.metadata["choices"], f.name, _one_of(f.metadata["choices"]))
                for f in fields(self) if "choices" in f.metadata]


@dataclass
class RunConfig(ConfigBase):
    """What every training run has: what to train on what, the optimiser's shared knobs and the machinery."""

    model: str = setting("mambaout_tiny", "model name")
    data_dir: str = setting("", "dataset root")
    output: str = setting("runs/train", "folder for checkpoints (best.pt, last.pt), logs, metrics and curves.png")
    num_classes: int | None = setting(None, "number of classes", unset="the dataset's")
    pretrained: bool = setting(False, "start from the published ImageNet weights")
    checkpoint: str | None = setting(None, "initial weights to fine-tune from (any layout); not a resume")
    resume: str | None = setting(None, "continue an interrupted run from its last.pt")
    batch_size: int = setting(128, "per-process batch size")
    global_batch_size: int | None = setting(
        None, "images per optimiser step over all processes (sets accumulation steps)", unset="batch size × processes")
    lr: float | None = setting(None, "peak learning rate")
    weight_decay: float = setting(0.05, "AdamW weight decay (never on norms and biases)")
    layer_decay: float | None = setting(
        None, "layer-wise lr decay: the head keeps the lr, each layer below it this times the one above "
              "(timm's lr_scale; 0.65-0.9 is usual for fine-tuning)", unset="off")
    clip_grad: float | None = setting(None, "clip the gradient norm to this value", unset="no clipping")
    drop_path: float | None = setting(0.1, "stochastic depth rate (rises linearly over the blocks)")
    amp: str = setting("none", "mixed precision: auto (fp16 on CUDA, none on CPU), none, bf16 (CPU or GPU), fp16 "
                               "(GPU, with a grad scaler)", choices=("auto", "none", "bf16", "fp16"))
    grad_checkpointing: bool = setting(False, "recompute activations in the backward pass to save memory")
    workers: int = setting(4, "data loading processes per training process")
    seed: int = setting(0, "random seed")
    device: str = setting("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    log_interval: int = setting(20, "optimiser steps between log lines when output is not a terminal")
    eval_interval: int | None = setting(1, "{unit} between evaluations and checkpoints")
    stop_after: int | None = setting(
        None, "end after this many {unit} of this invocation (continue later with --resume)", unset="run to the end")
    strict_data: bool = setting(False, "fail on the first unreadable image instead of skipping it with a warning")
    nonfinite: str = setting("stop", "on a NaN/inf loss: stop (the last good checkpoint is kept) or skip the step "
                                     "and count it", choices=("stop", "skip"))
    recipe: str | None = setting(None, "packaged recipe name or YAML path")

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.batch_size > 0, "batch_size", "a positive number"),
            (self.global_batch_size is None or self.global_batch_size > 0, "global_batch_size",
             "a positive number"),
            (self.lr is None or self.lr > 0, "lr", "a positive number"),
            (self.weight_decay >= 0, "weight_decay", "0 or more"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, "layer_decay", "in (0, 1]"),
            (self.drop_path is None or 0.0 <= self.drop_path < 1.0, "drop_path", "in [0, 1)"),
            (self.num_classes is None or self.num_classes > 0, "num_classes", "a positive number"),
            (self.workers >= 0, "workers", "0 or more"),
            (self.log_interval > 0, "log_interval", "a positive number"),
            (self.eval_interval is None or self.eval_interval > 0, "eval_interval", "a positive number"),
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
        raise ConfigError(f"setting {name!r} cannot be empty", name)
    args = [a for a in get_args(hint) if a is not type(None)]
    base = args[0] if get_origin(hint) is not tuple and args else hint
    if get_origin(base) is tuple:
        items = get_args(base)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ConfigError(f"setting {name!r} needs {len(items)} numbers, got {value!r}", name)
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
        raise ConfigError(f"setting {name!r} expects {getattr(base, '__name__', base)}, got {value!r}",
                          name) from None
    return value


def resolve_config(overrides: dict[str, Any] | None = None, recipe: str | None = None, *, cls: type):
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
            raise ConfigError(f"setting {name!r} must be {want}, got {getattr(cfg, name)!r}", name)


def replace(cfg, **changes):
    out = dataclasses.replace(cfg, **changes)
    validate(out)
    return out


__all__ = ["ConfigBase", "ConfigError", "RunConfig", "default", "list_recipes", "load_recipe", "resolve_config",
           "setting"]
