"""Configuration: the one place that reads the environment."""

from config.settings import Settings, SettingsError, load_settings, settings_or_exit

__all__ = ["Settings", "SettingsError", "load_settings", "settings_or_exit"]
