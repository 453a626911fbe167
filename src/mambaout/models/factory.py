"""``create_model``: build a registered variant, optionally with published or local weights."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .hf_layout import CONFIG_NAME, fetch_folder, is_folder_source, parse_config
from .hub import fetch_pretrained
from .mambaout import MambaOut
from .vit import VisionTransformer
from .weights import (
    CheckpointError,
    convert_official,
    extract_state_dict,
    load_state_dict_into,
    num_classes_in,
    read_checkpoint,
)
from .zoo import pretrained_cfg, resolve_weights

# Variant.builder -> the class that builds it.
BUILDERS: dict[str, type[nn.Module]] = {"mambaout": MambaOut, "vit": VisionTransformer}


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Sequence[int] | int = (0, 1, 2, 3),
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` (see :func:`list_models`), or ``name.tag`` for one of timm's pretrained tags
    (``mambaout_base_plus_rw.sw_e150_in12k``: its class count, input size and crop; ``mambaout list
    --pretrained``).

    pretrained: load the published weights of the tag (default: the model's first), downloaded once, then cached
        and checksum-verified.
    checkpoint_path: load a local file instead: official or timm layout, ``.pth``/``.pt``/``.bin``/
        ``.safetensors``, a ``{'model': ...}`` wrapper, or a checkpoint written by ``mambaout train``.
    num_classes: classifier size; by default the weights' own (1000 for ImageNet weights). When it differs from
        the file's, only the classifier is re-initialised (with a warning), for fine-tuning.
    features_only: return a feature extractor (timm's ``FeatureGetterNet``) giving the stage maps chosen by
        ``out_indices`` as NCHW tensors (``output_fmt='NHWC'`` for channels-last). MambaOut models only.
    kwargs: architecture overrides (``token_mixer=``, ``drop_rate=``, ``global_pool=``, ``device=``, ``dtype=``,
        ...); an unknown keyword raises ``TypeError``.

    ``name`` may also be a folder in timm's hub layout (``config.json`` + ``model.safetensors``, as
    :func:`mambaout.save_pretrained` and timm's ``save_for_hf`` write): ``local-dir:PATH`` or
    ``hf-hub:org/name[@revision]`` (through huggingface_hub's cache; ``HF_ENDPOINT`` for a mirror). Its weights
    are always loaded (a folder is a trained model, whatever ``pretrained`` says), and a ``config.json`` that
    does not match them is an error naming the difference.
    """
    if is_folder_source(name):
        if checkpoint_path is not None:
            raise ValueError(f"{name} brings its own weights; leave checkpoint_path out")
        return _create_from_folder(name, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate,
                                   features_only=features_only, out_indices=out_indices, **kwargs)
    variant, weights = resolve_weights(name)
    if pretrained and checkpoint_path is not None:
        raise ValueError("pass either pretrained=True or checkpoint_path=..., not both")
    loaded = None
    if pretrained or checkpoint_path is not None:
        path = fetch_pretrained(variant, weights) if pretrained else Path(checkpoint_path)
        loaded = (str(path), *_read_weights(path))
    return _build(name, variant, weights, loaded, num_classes, in_chans, drop_path_rate, features_only, out_indices,
                  kwargs)


def _build(name: str, variant, weights, loaded: tuple | None, num_classes: int | None, in_chans: int,
           drop_path_rate: float, features_only: bool, out_indices, kwargs: dict) -> nn.Module:
    """:func:`create_model` once the weights, if any, are read: ``loaded`` is ``(source, state_dict, stored
    architecture keywords, stored pretrained_cfg)`` or None."""
    feature_kwargs = {k: kwargs.pop(k) for k in ("output_fmt", "feature_cls") if k in kwargs}
    if not features_only and feature_kwargs:
        raise TypeError(f"{', '.join(feature_kwargs)} only apply with features_only=True")
    builder = BUILDERS[variant.builder]
    if features_only and builder is not MambaOut:
        raise ValueError(f"features_only applies to MambaOut models, not {name!r}; "
                         "use model.forward_intermediates() instead")

    cfg = pretrained_cfg(variant, weights)
    sd, source = None, None
    if loaded is not None:
        source, sd, stored_args, stored_cfg = loaded
        kwargs = {**stored_args, **kwargs}
        file_classes = num_classes_in(sd)
        if num_classes is None and file_classes is not None:
            num_classes = file_classes
        cfg.update(stored_cfg)
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    cfg["num_classes"] = num_classes

    args = {**variant.args, **kwargs}
    args.pop("num_classes", None)
    model = builder(in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate, **args)
    model.pretrained_cfg = cfg
    # The keywords beyond the variant's, so the model can be saved and rebuilt (save_pretrained's config.json).
    model.model_args = {k: v for k, v in kwargs.items() if k not in ("device", "dtype")}
    if cfg.get("fixed_input_size") and hasattr(model, "img_size"):
        # A fixed-size model (ViT) takes exactly the size it was built for, e.g. create_model(..., img_size=64).
        cfg["input_size"] = cfg["test_input_size"] = (3, *model.img_size)
    if in_chans != 3:
        cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
        if sd is not None:
            sd = _adapt_first_conv(sd, in_chans, variant.cfg.get("first_conv", "stem.conv1") + ".weight")
    # Whether the classifier is freshly initialised although weights were loaded (fine-tuning to other classes).
    model.fresh_classifier = sd is not None and load_state_dict_into(model, sd, source=source)
    if features_only:
        return _feature_extractor(model, out_indices, **feature_kwargs)
    return model


def _read_weights(path: Path) -> tuple[dict, dict, dict]:
    """The state dict of ``path`` in our layout, the architecture keywords it records (a checkpoint of ours keeps
    the mixer, head size, ... it was trained with) and its pretrained_cfg."""
    data = read_checkpoint(path)
    sd = convert_official(extract_state_dict(data))
    stored = {}
    meta = data.get("__metadata__") or {}
    for args in (meta.get("model_args"), data.get("model_args")):
        if isinstance(args, dict):
            stored.update(args)
    cfg = data["pretrained_cfg"] if isinstance(data.get("pretrained_cfg"), dict) else {}
    return sd, stored, cfg


def _create_from_folder(name: str, num_classes: int | None = None, features_only: bool = False,
                        out_indices: Sequence[int] | int = (0, 1, 2, 3), **kwargs: Any) -> nn.Module:
    config, weights, where = fetch_folder(name)
    arch, config_classes, cfg, model_args = parse_config(config, where)
    sd, stored_args, stored_cfg = _read_weights(weights)  # read once: checked here, then loaded by _build
    file_classes = num_classes_in(sd)
    if config_classes is not None and file_classes is not None and config_classes != file_classes:
        raise CheckpointError(f"{where}: {CONFIG_NAME} says num_classes={config_classes}, but {weights.name}'s "
                              f"classifier has {file_classes} outputs")
    feature_kwargs = {k: kwargs.pop(k) for k in ("output_fmt", "feature_cls") if k in kwargs}
    # timm's save_for_hf records the class count and input channels among the constructor's arguments too.
    model_args.pop("num_classes", None)
    saved_chans = model_args.pop("in_chans", None)
    in_chans = kwargs.pop("in_chans", 3)
    if saved_chans is not None and in_chans == 3:
        in_chans = int(saved_chans)
    drop_path_rate = kwargs.pop("drop_path_rate", 0.0)
    variant, default_weights = resolve_weights(arch)
    try:
        model = _build(arch, variant, default_weights, (str(weights), sd, stored_args, stored_cfg), num_classes,
                       in_chans, drop_path_rate, False, (), {**model_args, **kwargs})
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {CONFIG_NAME} describes {arch}, but {e}") from None
    # The folder's preprocessing and labels describe its weights; the built model's own entries (class count,
    # input channels) stay as built.
    own = model.pretrained_cfg
    keep = {"num_classes": own["num_classes"], "input_size": (own["input_size"][0], *cfg.get("input_size",
                                                                                              own["input_size"])[1:])}
    if model.fresh_classifier:
        cfg = {k: v for k, v in cfg.items() if k not in ("label_names", "label_descriptions")}
    own.update({**cfg, **keep, "source": name})
    if features_only:
        return _feature_extractor(model, out_indices, **feature_kwargs)
    return model


def from_pretrained(source: str | Path, **kwargs: Any) -> nn.Module:
    """A model from a folder in timm's hub layout: ``local-dir:PATH``, ``hf-hub:ORG/NAME[@REV]``, a path to a
    folder holding ``config.json``, or a bare hub id ``ORG/NAME[@REV]``; ``kwargs`` as for :func:`create_model`
    (``num_classes=`` to fine-tune to other classes, ...). The counterpart of :func:`mambaout.save_pretrained`."""
    text = str(source)
    if not is_folder_source(text):
        text = f"local-dir:{text}" if Path(text).expanduser().is_dir() else f"hf-hub:{text}"
    return create_model(text, **kwargs)


def model_from_source(name: str | None, pretrained: bool = False, checkpoint_path: str | Path | None = None,
                      **kwargs) -> nn.Module:
    """``create_model`` where ``name`` may be left out for a checkpoint that records it (``mambaout train``'s).
    ``checkpoint_path`` may also be a folder in timm's hub layout: ``local-dir:PATH``, ``hf-hub:org/name`` or a
    plain path to a folder holding ``config.json``; the folder names its architecture."""
    folder = _folder_source(checkpoint_path)
    if folder is not None:
        model = create_model(folder, **kwargs)
        if name is not None and name != model.pretrained_cfg["architecture"]:
            raise ValueError(f"--model {name} does not match {checkpoint_path}, which holds a "
                             f"{model.pretrained_cfg['architecture']}")
        return model
    if name is None:
        if checkpoint_path is None:
            raise ValueError("a model name (--model) is needed with the published weights")
        name = read_checkpoint(checkpoint_path).get("model_name")
        if not name:
            raise ValueError(f"{checkpoint_path} does not record its model; pass the model name (--model NAME)")
    return create_model(name, pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)


def _folder_source(checkpoint_path) -> str | None:
    if checkpoint_path is None:
        return None
    if is_folder_source(str(checkpoint_path)):
        return str(checkpoint_path)
    path = Path(checkpoint_path)
    return f"local-dir:{path}" if path.is_dir() and (path / CONFIG_NAME).is_file() else None


def _adapt_first_conv(sd: dict, in_chans: int, key: str = "stem.conv1.weight") -> dict:
    """RGB stem weights for another number of input channels, as timm does (sum for 1, tile and rescale)."""
    if key not in sd or sd[key].shape[1] == in_chans:
        return sd
    w = sd[key].float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-in_chans // w.shape[1])
        w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (w.shape[1] / in_chans)
    return {**sd, key: w.to(sd[key].dtype)}


def _feature_extractor(model: MambaOut, out_indices, output_fmt: str = "NCHW", feature_cls: str | None = None):
    from timm.models._features import FeatureGetterNet

    if feature_cls not in (None, "getter"):
        raise ValueError(f"feature_cls={feature_cls!r} is not supported; MambaOut uses 'getter'")
    cfg = copy.deepcopy(model.pretrained_cfg)
    net = FeatureGetterNet(model, out_indices=out_indices, output_fmt=output_fmt)
    net.pretrained_cfg = net.default_cfg = cfg
    return net


__all__ = ["create_model", "model_from_source", "CheckpointError"]
