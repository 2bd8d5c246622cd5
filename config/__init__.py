"""Configuration: the one place that reads the environment."""

from config.settings import (
    Settings,
    SettingsError,
    environment_name,
    load_settings,
    settings_help,
    settings_or_exit,
    unknown_variables,
)

__all__ = [
    "Settings",
    "SettingsError",
    "environment_name",
    "load_settings",
    "settings_help",
    "settings_or_exit",
    "unknown_variables",
]
