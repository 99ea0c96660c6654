"""Shared bits of the top-level diagnostic scripts: ✅/❌ lines and loading `.env`."""

from __future__ import annotations

import sys

from ..settings import Settings, load_env_file, load_settings
from ..telemetry.logs import mask


class Report:
    """Collects ✅/⚠️/❌ lines; `exit_code` is 1 when anything failed."""

    def __init__(self) -> None:
        self.failed = 0

    def ok(self, message: str) -> None:
        print(f"✅ {message}")

    def warn(self, message: str) -> None:
        print(f"⚠️  {message}")

    def fail(self, message: str) -> None:
        self.failed += 1
        print(f"❌ {message}")

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def settings_from_env() -> Settings:
    """Settings as the backend would see them, `.env` included."""
    load_env_file()
    return load_settings()


def describe(settings: Settings) -> str:
    return f"model={settings.model} url={settings.base_url} key={mask(settings.api_key or '')}"


def force_utf8_stdout() -> None:
    """Windows consoles default to a code page that cannot print ✅ or Chinese."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure:
        reconfigure(encoding="utf-8", errors="replace")
