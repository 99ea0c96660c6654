"""Shared bits of the top-level diagnostic scripts: ✅/❌ lines and how the settings are shown.

Standard library only at import time: `check_modelscope_env.py` must be able to say
which packages are missing when run by a Python that has none of them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import Settings

STATUS_MARKS = ("✅", "⚠️", "❌", "⏱")


def plain(message: str) -> str:
    """The message without a leading status mark: error texts carry their own (`❌ API Key未设置…`)."""
    stripped = message.lstrip()
    for mark in STATUS_MARKS:
        if stripped.startswith(mark):
            return stripped[len(mark) :].lstrip()
    return message


class Report:
    """Collects ✅/⚠️/❌ lines (one mark each); `exit_code` is 1 when anything failed."""

    def __init__(self) -> None:
        self.failed = 0

    def ok(self, message: str) -> None:
        print(f"✅ {plain(message)}")

    def warn(self, message: str) -> None:
        print(f"⚠️  {plain(message)}")

    def fail(self, message: str) -> None:
        self.failed += 1
        print(f"❌ {plain(message)}")

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def describe(settings: Settings) -> str:
    """The model, endpoint and masked key the scripts talk to."""
    from ..settings import reveal  # imported late: this module must load on the standard library alone
    from ..telemetry.logs import mask

    return f"model={settings.model} url={settings.base_url} key={mask(reveal(settings.api_key))}"


def force_utf8_stdout() -> None:
    """Windows consoles default to a code page that cannot print ✅ or Chinese."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure:
        reconfigure(encoding="utf-8", errors="replace")
