"""Logging for the backend: INFO by default, a DEBUG switch, and no secret ever written.

Debug mode (`DEBUG=true` or `LOG_LEVEL=DEBUG`) traces the setup config, each task's
fields, the prompt, the API call, token usage and the final result, to the console
and to `logs/ml_backend.log`. Every handler carries `RedactSecrets`, so the API key,
bearer tokens and basic-auth headers are masked even in debug output, and control
characters are escaped (`\n` -> `\\n`), so a task id or a path can never forge a log line.
"""

from __future__ import annotations

import base64
import logging
import re
import sys
from pathlib import Path
from typing import TextIO

from ..settings import Settings, reveal

FORMAT = "[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s"
_PATTERNS = [
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bms-[0-9a-f]{8}-[0-9a-f-]{20,}\b"),  # ModelScope token shape
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}\b"),  # OpenAI/DashScope key shape
]


# C0/C1 controls, DEL, Unicode line/paragraph separators and lone surrogates (a UTF-8 log file
# cannot hold them) as visible escapes; tab is kept.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c != 0x09}
_CONTROLS |= {c: f"\\u{c:04x}" for c in [0x2028, 0x2029, *range(0xD800, 0xE000)]}
_CONTROLS |= {0x0A: "\\n", 0x0D: "\\r"}


def escape_controls(text: str) -> str:
    """One log record, one line: newlines and other control characters become escapes."""
    return text.translate(_CONTROLS)


def mask(secret: str) -> str:
    """`ms-1234…abcd`-style display for diagnostics; short secrets are fully hidden."""
    if not secret:
        return "(未设置 / not set)"
    return f"{secret[:4]}…{secret[-4:]}" if len(secret) >= 12 else "****"


class RedactSecrets(logging.Filter):
    """Replace known secrets and credential-shaped strings in every record."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s and len(s) >= 4]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        text = _PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)} ***", text)
        text = _PATTERNS[1].sub(lambda m: f"{m.group(1)} ***", text)
        for pattern in _PATTERNS[2:]:
            text = pattern.sub("***", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = escape_controls(self.redact(message))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(
    settings: Settings, secrets: list[str] | None = None, console: TextIO | None = None, quiet: bool = False
) -> None:
    """Install console and file handlers on the root logger (idempotent).

    Command-line tools pass `console=sys.stderr, quiet=True`: their output is on stdout,
    and per-chunk INFO lines would break the progress bar (the log file keeps them).
    """
    level = logging.DEBUG if settings.debug else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ml_backend", False):
            root.removeHandler(handler)
    password = reveal(settings.basic_auth_pass)
    known = [reveal(settings.api_key), reveal(settings.label_studio_api_key), password]
    if settings.basic_auth_user and password:  # the header's token, should anything print it
        known.append(base64.b64encode(f"{settings.basic_auth_user}:{password}".encode()).decode())
    redactor = RedactSecrets(known + list(secrets or []))
    stream = logging.StreamHandler(console or sys.stdout)
    if quiet and not settings.debug:
        stream.setLevel(logging.WARNING)
    handlers: list[logging.Handler] = [stream]
    try:
        log_dir = Path(settings.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_dir / "ml_backend.log", encoding="utf-8"))
    except OSError as exc:  # a read-only volume must not stop the server
        print(f"无法写入日志目录 (cannot write log dir) {settings.log_dir}: {exc}", file=sys.stderr)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(redactor)
        handler._ml_backend = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays at WARNING unless debugging.
    for name in ("httpx", "httpx2", "openai", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG if settings.debug else logging.WARNING)
