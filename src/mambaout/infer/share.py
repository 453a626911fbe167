"""Share a model: a folder in timm's Hugging Face hub layout with a model card, and the push to the hub.

:func:`save_pretrained` writes ``config.json`` (timm's keys, see :mod:`mambaout.models.hf_layout`),
``model.safetensors`` and ``README.md``, the model card: YAML metadata (library, tags, datasets, metrics as a
``model-index``) from huggingface_hub's ``ModelCardData``, then the recipe, the data and the measured metrics of
the run the weights came from (``config.yaml``, ``summary.json``, ``eval.json`` beside the checkpoint), and how to
load the model with timm, transformers and this package. :func:`push_to_hub` uploads that folder with
huggingface_hub's ``create_repo`` and ``upload_folder``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..models.hf_layout import CONFIG_NAME, OUR_KEY
from .export import _first_line, _is_json, _umask

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# pretrained_cfg entries that describe where a file came from, not the weights being written.
_SOURCE_KEYS = ("file", "source", "url", "hf_hub_id", "state_dict", "checkpoint_path")
# Settings of config.yaml shown in the card's recipe table, in this order, when the run has them.
_RECIPE_KEYS = ("recipe", "epochs", "batch_size", "global_batch_size", "lr", "min_lr", "sched", "warmup_epochs",
                "cooldown_epochs", "weight_decay", "layer_decay", "clip_grad", "drop_path", "smoothing", "mixup",
                "cutmix", "auto_augment", "color_jitter", "reprob", "img_size", "amp", "ema", "ema_decay",
                "pretrained", "checkpoint", "seed")


class ShareError(RuntimeError):
    """The model could not be shared: no token, no network, or the hub refused."""


@dataclass
class RunInfo:
    """What a checkpoint's run folder says about the weights."""

    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_info(source: str | Path) -> RunInfo:
    """The checkpoint of ``source`` (a run folder: its ``best.pt``, else ``last.pt``; or a checkpoint file) and
    what its folder records."""
    source = Path(source)
    if source.is_dir():
        ckpt = next((source / n for n in ("best.pt", "last.pt") if (source / n).is_file()), None)
        if ckpt is None:
            raise FileNotFoundError(f"{source} is a folder without best.pt or last.pt (not a 'mambaout train' run)")
    elif source.is_file():
        ckpt = source
    else:
        raise FileNotFoundError(f"checkpoint or run folder not found: {source}")
    folder = ckpt.parent
    info = RunInfo(checkpoint=ckpt, summary=_read_json(folder / "summary.json"),
                   evaluation=_read_json(folder / "eval.json"))
    try:
        loaded = yaml.safe_load((folder / "config.yaml").read_text())
        info.config = loaded if isinstance(loaded, dict) else {}
    except (OSError, yaml.YAMLError):
        pass
    return info


def hf_config(model: nn.Module) -> dict[str, Any]:
    """``config.json`` of ``model`` in timm's layout; keywords timm's constructors do not take go under ours."""
    from .. import __version__
    from .export import export_metadata

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    arch = cfg.get("architecture")
    if not arch:
        raise ValueError("the model has no pretrained_cfg['architecture']; build it with mambaout.create_model")
    meta = export_metadata(model)
    # "tag" names published weights (in1k, ...), which a fine-tuned model is no longer.
    pretrained = {k: v for k, v in cfg.items() if k not in (*_SOURCE_KEYS, "architecture", "tag", "label_names",
                                                            "label_descriptions") and _is_json(v)}
    pretrained.update({k: meta[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")})
    pretrained.update(num_classes=int(model.num_classes), custom_load=False, fixed_input_size=bool(
        cfg.get("fixed_input_size", False)))
    out: dict[str, Any] = {"architecture": arch, "num_classes": int(model.num_classes),
                           "num_features": int(getattr(model, "num_features", 0))}
    pool = getattr(getattr(model, "head", None), "global_pool", None)
    if isinstance(pool, str) and pool:
        out["global_pool"] = pool
    labels = cfg.get("label_names")
    if labels and len(labels) == model.num_classes:
        out["label_names"] = [str(n) for n in labels]
    # What timm passes to its constructor on loading; everything else of ours goes under OUR_KEY, which timm
    # leaves alone (its MambaOut takes no token_mixer=, for one).
    # (Not num_classes: transformers' TimmWrapper passes that beside these and would get it twice.)
    out["model_args"] = {"in_chans": int(getattr(model, "in_chans", pretrained["input_size"][0])),
                         **({"global_pool": pool} if out.get("global_pool") else {})}
    out["pretrained_cfg"] = pretrained
    ours: dict[str, Any] = {"version": __version__}
    args = getattr(model, "model_args", None)
    if args:
        ours["model_args"] = {k: v for k, v in args.items() if _is_json(v)}
    out[OUR_KEY] = ours
    return out


def _load(model_or_checkpoint) -> tuple[nn.Module, RunInfo]:
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint, RunInfo()
    from ..models import model_from_source

    info = run_info(model_or_checkpoint)
    return model_from_source(None, checkpoint_path=info.checkpoint).eval(), info


def save_pretrained(model_or_checkpoint: nn.Module | str | Path, save_directory: str | Path,
                    repo_id: str | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into ``save_directory``.

    ``model_or_checkpoint``: a model built by :func:`mambaout.create_model`, a checkpoint file, or a
    ``mambaout train`` run folder (its ``best.pt``; the card then carries the run's recipe and metrics).
    ``repo_id``: the hub repository the card's loading examples name (default: the folder, as ``local-dir:``).
    Each file appears whole or not at all: all three are written into a private folder beside
    ``save_directory`` first.
    """
    model, info = _load(model_or_checkpoint)
    return write_pretrained(model, save_directory, info=info, repo_id=repo_id)


def write_pretrained(model: nn.Module, save_directory: str | Path, info: RunInfo | None = None,
                     repo_id: str | None = None) -> Path:
    """:func:`save_pretrained` of a built ``model``, with ``info`` about the run its weights came from."""
    from safetensors.torch import save_file

    info = info or RunInfo()
    config = hf_config(model)
    out = Path(save_directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; save_pretrained writes a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        # Cloned: safetensors refuses tensors that share storage.
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, staging / WEIGHTS_NAME, metadata={"format": "pt"})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (staging / CARD_NAME).write_text(model_card(model, config, info, repo_id, out))
        out.mkdir(exist_ok=True)
        mode = 0o666 & ~_umask()
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
            os.chmod(staging / name, mode)
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# -------------------------------------------------------------------------------------------------- the card
def _dataset_name(config: dict[str, Any]) -> str | None:
    for key in ("train_data", "data_dir"):
        value = config.get(key)
        if value:
            value = str(value)
            return value[3:] if value.startswith("hf:") else Path(value.split("{")[0].rstrip("/*-")).name or value
    return None


def _card_data(model: nn.Module, config: dict[str, Any], info: RunInfo, repo_id: str):
    from huggingface_hub import EvalResult, ModelCardData

    dataset = _dataset_name(info.config)
    results = []
    top1 = info.evaluation.get("top1", info.summary.get("best_top1"))
    top5 = info.evaluation.get("top5", info.summary.get("top5"))
    for metric, value, label in (("accuracy", top1, "top-1 accuracy"), ("accuracy", top5, "top-5 accuracy")):
        if isinstance(value, (int, float)):
            results.append(EvalResult(task_type="image-classification", dataset_type=dataset or "imagefolder",
                                      dataset_name=dataset or "own images", metric_type=metric,
                                      metric_value=round(float(value), 2), metric_name=label))
    return ModelCardData(
        library_name="timm", license=str(model.pretrained_cfg.get("license") or "apache-2.0"),
        pipeline_tag="image-classification", tags=["image-classification", "timm", "mambaout", config["architecture"]],
        datasets=[dataset] if dataset else None, metrics=["accuracy"] if results else None,
        model_name=repo_id, eval_results=results or None)


def model_card(model: nn.Module, config: dict[str, Any], info: RunInfo, repo_id: str | None,
               folder: Path | None = None) -> str:
    """The README.md of a shared folder: YAML metadata, then what the model is, how it was trained, what it
    scored, and how to load it."""
    from ..models import count_macs, count_params
    from ..models.zoo import VARIANTS

    arch = config["architecture"]
    pc = config["pretrained_cfg"]
    c, h, w = pc["input_size"]
    mixer = (config[OUR_KEY].get("model_args") or {}).get("token_mixer", "conv")
    timm_knows = _timm_knows(arch) and mixer == "conv"  # timm's MambaOut has the depthwise conv only
    title = repo_id or (folder.name if folder else arch)
    lines = ["---", _card_data(model, config, info, title).to_yaml(), "---", "", f"# {title}", "",
             f"`{arch}`, an image classifier of the MambaOut family (Yu & Wang, *MambaOut: Do We Really Need "
             f"Mamba for Vision?*, CVPR 2025){_paper_note(VARIANTS[arch])}, shared with mambaout.", "",
             "## Model", "", "| | |", "| --- | --- |",
             f"| architecture | `{arch}` |", f"| classes | {config['num_classes']} |",
             f"| parameters | {count_params(model) / 1e6:.2f} M |",
             f"| GMACs at {h}×{w} | {count_macs(model, (c, h, w)) / 1e9:.2f} |",
             f"| input | {c}×{h}×{w}, {pc['interpolation']} resize, crop_pct {pc['crop_pct']:g}, mean "
             f"{_fmt(pc['mean'])}, std {_fmt(pc['std'])} |"]
    if config.get("label_names"):
        names = config["label_names"]
        lines.append(f"| labels | {', '.join(map(str, names[:20]))}{' ...' if len(names) > 20 else ''} |")
    lines += _recipe_lines(info) + _metric_lines(info) + _usage_lines(repo_id, folder, timm_knows)
    return "\n".join(lines) + "\n"


def _paper_note(variant) -> str:
    if variant.top1_paper is None:
        return ""
    return f"; the architecture scores {variant.top1_paper:.1f}% ImageNet-1k top-1 in the paper"


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"


def _timm_knows(arch: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return timm.is_model(arch)


def _recipe_lines(info: RunInfo) -> list[str]:
    if not info.config:
        return ["", "## Training", "", "Not recorded: these weights were saved from a model in memory, not from a "
                "`mambaout train` run."]
    cfg = info.config
    lines = ["", "## Training", "", f"Trained with `mambaout train` from `{cfg.get('model', '?')}`"
             + (f", starting from `{cfg['checkpoint']}`" if cfg.get("checkpoint") else "")
             + (" with published ImageNet weights" if cfg.get("pretrained") else "") + ".", ""]
    dataset = _dataset_name(cfg)
    if dataset:
        where = ", ".join(f"{k} `{cfg[k]}`" for k in ("data_dir", "train_data", "val_data") if cfg.get(k))
        lines += [f"**Data**: `{dataset}` ({where}).", ""]
    lines += ["**Recipe** (the run's `config.yaml`):", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {cfg[k]} |" for k in _RECIPE_KEYS if k in cfg and cfg[k] not in (None, "")]
    return lines


def _metric_lines(info: RunInfo) -> list[str]:
    rows = []
    ev, sm = info.evaluation, info.summary
    if ev:
        rows.append(f"| `mambaout eval` (eval.json) | {ev.get('top1', float('nan')):.2f}% | "
                    f"{ev.get('top5', float('nan')):.2f}% | {ev.get('images', '?')} | "
                    f"{ev.get('input_size', ['?'])[-1]}px, crop_pct {ev.get('crop_pct', '?')} |")
    if sm:
        rows.append(f"| best epoch of the run (summary.json) | {sm.get('best_top1', float('nan')):.2f}% | "
                    f"{sm.get('top5', float('nan')):.2f}% | | after {sm.get('epoch', '?')} epochs |")
    if not rows:
        return ["", "## Metrics", "", "None recorded with these weights."]
    return ["", "## Metrics", "", "| measured by | top-1 | top-5 | images | setting |",
            "| --- | ---: | ---: | ---: | --- |", *rows]


def _usage_lines(repo_id: str | None, folder: Path | None, timm_knows: bool) -> list[str]:
    source = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{folder}"
    lines = ["", "## How to load", "", "```python", "import mambaout", "",
             f'model = mambaout.create_model("{source}").eval()']
    if timm_knows:
        lines += ["", "import timm", "", f'model = timm.create_model("{source}", pretrained=True).eval()',
                  "", "from transformers import AutoModelForImageClassification", "",
                  f'model = AutoModelForImageClassification.from_pretrained("{repo_id or folder}")']
    lines += ["```", "", f"From the command line: `mambaout predict --checkpoint {source} IMAGE...`."]
    if not timm_knows:
        lines += ["", "timm does not build this architecture (a mambaout lab model), so only mambaout loads it."]
    return lines


def push_to_hub(model_or_checkpoint: nn.Module | str | Path, repo_id: str, private: bool = False,
                revision: str | None = None, token: str | None = None,
                commit_message: str = "Upload MambaOut model") -> str:
    """Save ``model_or_checkpoint`` with :func:`save_pretrained` and upload it to the hub repository ``repo_id``
    (created if missing; ``revision``: a branch, created from main if missing). Returns the commit's URL.

    Every failure (no token, no network, a refusal) raises :class:`ShareError` with one line; nothing local is
    touched.
    """
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise ShareError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    endpoint = (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="mambaout-push-") as tmp:
        folder = save_pretrained(model_or_checkpoint, Path(tmp) / repo_id.split("/")[-1], repo_id=repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                     commit_message=commit_message)
        except Exception as e:  # huggingface_hub's HTTP errors, httpx's connection errors, OSError: all one line
            where = endpoint or "https://huggingface.co"
            raise ShareError(f"could not push to {repo_id} on {where}: {type(e).__name__}: {_first_line(e)}") from None
    return str(getattr(info, "commit_url", info))

