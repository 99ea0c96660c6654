"""Configuration, read once per process: the environment variables (`environment`), the immutable
`Settings` passed down from each entry point (`settings`), and the endpoint profile (`endpoint`)."""

from .endpoint import (
    DEFAULT_API_URL,
    DEFAULT_MODEL,
    SERVED_MODELS_2026,
    EndpointProfile,
    endpoint_profile,
    normalize_base_url,
)
from .environment import Environment, SettingsError, load_env_file, read_environment
from .settings import EXTEND_BELOW, Settings, load_settings, reveal

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_MODEL",
    "EXTEND_BELOW",
    "SERVED_MODELS_2026",
    "EndpointProfile",
    "Environment",
    "Settings",
    "SettingsError",
    "endpoint_profile",
    "load_env_file",
    "load_settings",
    "normalize_base_url",
    "read_environment",
    "reveal",
]
