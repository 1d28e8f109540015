"""Every environment variable loadbench reads, declared once, resolved into a frozen `Settings`.

    python -m loadbench.config --markdown    # the README's table, generated
"""

from loadbench.config.settings import (
    SETTINGS,
    Setting,
    Settings,
    default_paths,
    label,
    load,
    markdown_table,
    model_slug,
    variants,
)
from loadbench.errors import ConfigError

__all__ = ["SETTINGS", "ConfigError", "Setting", "Settings", "default_paths", "label", "load",
           "markdown_table", "model_slug", "variants"]
