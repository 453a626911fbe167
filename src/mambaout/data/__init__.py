"""Images in: preprocessing (``transforms``), ImageFolder trees (``folder``), unreadable files (``safe``), seeded
augmentation (``seeded``) and the bundled real images (``digits``)."""
from .transforms import create_eval_transform, resolve_data_config

__all__ = ["create_eval_transform", "resolve_data_config"]
