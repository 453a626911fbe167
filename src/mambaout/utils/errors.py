"""The error of a setting that cannot be used, raised from every layer and printed by the CLI as one line."""
from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and the value, ``setting`` the setting's
    name when there is one (so the CLI can name its flag too)."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting
