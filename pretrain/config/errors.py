"""The one exception of the config package (its own module: the objective sections raise it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user error in a config file or an override; the message names the key."""
