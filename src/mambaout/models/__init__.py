"""MambaOut models: the architecture, the variant table and checkpoint loading."""
from .complexity import count_macs, count_params
from .factory import create_model, from_pretrained, model_from_source
from .hub import DownloadError
from .mambaout import GatedCNNBlock, MambaOut
from .mixers import (
    create_token_mixer,
    list_token_mixers,
    register_token_mixer,
    ssm,  # noqa: F401  (registers the 'ssm' token mixer)
)
from .weights import CheckpointError, convert_official, load_state_dict_into, read_checkpoint
from .zoo import VARIANTS, list_models

__all__ = [
    "CheckpointError", "DownloadError", "GatedCNNBlock", "MambaOut", "VARIANTS", "convert_official", "count_macs",
    "count_params",
    "create_model", "create_token_mixer", "from_pretrained", "list_models", "list_token_mixers", "load_state_dict_into",
    "model_from_source", "read_checkpoint", "register_token_mixer",
]
