"""Images in: preprocessing (``transforms``), ImageFolder trees (``folder``), unreadable files (``safe``), seeded
augmentation (``seeded``) and the bundled real images (``digits``)."""
from .transforms import MAX_ASPECT_RATIO, CapAspectRatio, create_eval_transform, resolve_data_config

__all__ = ["MAX_ASPECT_RATIO", "CapAspectRatio", "create_eval_transform", "resolve_data_config"]
