"""The error of a setting that cannot be used, raised from every layer and printed by the CLI as one line."""


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and the value."""
