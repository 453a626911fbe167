"""The MambaOut backbone in OpenMMLab's registries (mmdet, mmseg).

A config loads it with ``custom_imports = dict(imports=['mambaout.integrations.openmmlab'],
allow_failed_imports=False)`` and then names ``backbone=dict(type='MambaOut', arch='mambaout_tiny', ...)``.
Importing this module registers the class in mmengine's root ``MODELS`` registry and in mmdet's and mmseg's
where they import; without mmengine it raises ImportError naming the extra to install.

The backbone is :class:`mambaout.dense.backbone.MambaOutBackbone`, the one ``mambaout detect``/``segment``
train: a LayerNorm on each stage output (the paper's authors measured 46.1 mIoU without it, 47.4 with),
``frozen_stages`` that stay in eval mode and without gradients, and ImageNet weights from any layout
``create_model`` reads (official release, timm, a ``mambaout train`` checkpoint, safetensors) through
``init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL)`` (a URL is downloaded once into the cache, verified
as ``pretrained=True`` downloads are), read with ``weights_only`` like every checkpoint here.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from ..dense.backbone import MambaOutBackbone

REGISTRY_MODULES = ("mmdet.registry", "mmseg.registry")


class MambaOut(MambaOutBackbone):
    """``MambaOutBackbone`` with OpenMMLab's construction keywords.

    arch: the variant (``mambaout_tiny``, ``mambaout_small``, ``mambaout_base``, a lab twin, ...).
    init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads classification weights of any layout (the
        classifier is dropped); OpenMMLab's other initialisers do not apply (the model initialises itself).
    norm_eval: accepted for configs written for BatchNorm backbones, and changes nothing: LayerNorm has no running
        statistics, so its eval mode is its training mode.
    """

    def __init__(self, arch: str = "mambaout_tiny", drop_path_rate: float | None = None, frozen_stages: int = -1,
                 out_indices: Sequence[int] = (0, 1, 2, 3), init_cfg: dict | None = None, pretrained: bool = False,
                 norm_eval: bool = False, **kwargs):
        checkpoint = _pretrained_checkpoint(init_cfg)
        super().__init__(arch, checkpoint_path=checkpoint, pretrained=pretrained, drop_path_rate=drop_path_rate,
                         frozen_stages=frozen_stages, out_indices=out_indices, **kwargs)
        self.init_cfg = init_cfg
        self.norm_eval = norm_eval

    def init_weights(self) -> None:
        """Nothing left to do: the weights were loaded when the backbone was built (mmengine calls this)."""

    def forward(self, x):
        # mmdet's necks and mmseg's heads index the stage maps, so a tuple as their own backbones return.
        return tuple(super().forward(x))


def _pretrained_checkpoint(init_cfg) -> str | None:
    if init_cfg is None:
        return None
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for cfg in cfgs:
        kind = cfg.get("type") if isinstance(cfg, dict) else None
        if kind == "Pretrained":
            checkpoint = cfg.get("checkpoint")
            if not checkpoint:
                raise ValueError("init_cfg type='Pretrained' needs checkpoint=PATH")
            checkpoint = str(checkpoint)
            if checkpoint.startswith(("http://", "https://")):
                from ..models.hub import cache_dir, download_url

                name = checkpoint.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "checkpoint.pth"
                return str(download_url(checkpoint, cache_dir() / "openmmlab" / name))
            return str(Path(checkpoint).expanduser())
        raise ValueError(f"init_cfg type {kind!r} is not supported by the MambaOut backbone (it initialises "
                         "itself); use type='Pretrained', checkpoint=PATH for ImageNet weights")
    return None


def register() -> list[str]:
    """Register :class:`MambaOut` as ``'MambaOut'`` in mmengine's root ``MODELS`` and in mmdet's and mmseg's where
    they import; returns the registries' names. Registering twice is a no-op."""
    try:
        from mmengine.registry import MODELS
    except ImportError as e:
        raise ImportError("mambaout.integrations.openmmlab needs mmengine (and mmdet or mmsegmentation): "
                          "pip install 'mambaout[openmmlab]'") from e
    # The root registry too: mmdet's and mmseg's import all their models before building anything, which needs
    # mmcv's compiled ops; mmengine's builds the backbone with mmcv-lite alone.
    _register_in(MODELS)
    found = ["mmengine"]
    for name in REGISTRY_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        _register_in(module.MODELS)
        found.append(name.split(".")[0])
    return found


def _register_in(registry) -> None:
    # module_dict, not get(): get() first imports the whole of mmdet.models, whose NMS needs mmcv's compiled ops.
    if registry.module_dict.get("MambaOut") is not MambaOut:
        registry.register_module(name="MambaOut", module=MambaOut, force=True)


REGISTERED = register()
