"""mambaout: the MambaOut vision models (Yu & Wang, CVPR 2025) as a library and a command line.

Importing this package builds nothing, downloads nothing and launches nothing.
"""
from . import _moved  # noqa: F401  (the module paths from before the folders still import)
from .data.convert import write_shards
from .data.sources import open_data
from .data.transforms import create_eval_transform, resolve_data_config
from .engine.optim import param_groups
from .infer.share import ShareError, push_to_hub, save_pretrained
from .models import (
    VARIANTS,
    CheckpointError,
    DownloadError,
    MambaOut,
    count_macs,
    count_params,
    create_model,
    from_pretrained,
    list_models,
    list_token_mixers,
    read_checkpoint,
    register_token_mixer,
)

__version__ = "0.1.0"

__all__ = [
    "VARIANTS", "CheckpointError", "DownloadError", "MambaOut", "__version__", "count_macs", "count_params",
    "create_eval_transform", "create_model", "from_pretrained", "list_models", "list_token_mixers", "open_data",
    "param_groups",
    "read_checkpoint", "register_token_mixer", "resolve_data_config", "save_pretrained", "push_to_hub", "ShareError",
    "write_shards",
]
