"""What predict-on-import needs to know, read once at process entry, and who has opted in.

A project opts in with `{"predict_on_import": true}` in its ML backend's extra params, or
every project does with `PREDICT_ON_IMPORT=on` (an explicit `false` in a project's extra
params still opts that project out). The job reads and writes Label Studio, so it needs
`LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY`; without them nothing else changes and
`missing_line` is the one line the log and the status page show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..labeling.prompts import project_params
from ..settings import Settings, reveal

PARAM = "predict_on_import"
_ON = ("1", "true", "yes", "on", "y")  # a project's own `predict_on_import` written as a word


@dataclass(frozen=True)
class ImportConfig:
    """The settings predict-on-import uses, gathered from `Settings` and its own two variables."""

    for_all: bool = False  # PREDICT_ON_IMPORT=on
    public_url: str | None = None  # BACKEND_PUBLIC_URL: how Label Studio reaches this backend
    label_studio_url: str | None = None
    label_studio_key: str | None = field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    data_dir: Path = Path("data")
    max_request_bytes: int = 100 * 1024 * 1024

    @property
    def can_run(self) -> bool:
        return bool(self.label_studio_url and self.label_studio_key)

    @property
    def missing_line(self) -> str:
        """Why opted-in projects get nothing ("" when they can)."""
        if self.can_run:
            return ""
        return ("导入即预测需要 LABEL_STUDIO_URL 和 LABEL_STUDIO_API_KEY，当前未设置，导入的任务不会自动预测 "
                "(predict on import needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY: imported tasks are not predicted)")


def import_config(settings: Settings) -> ImportConfig:
    """The config of this process, from the settings read once at its entry."""
    user, password = settings.basic_auth_user, reveal(settings.basic_auth_pass)
    return ImportConfig(
        for_all=settings.predict_on_import,
        public_url=settings.backend_public_url,
        label_studio_url=(settings.label_studio_url or "").rstrip("/") or None,
        label_studio_key=reveal(settings.label_studio_api_key) or None,
        basic_auth=(user, password) if user and password else None,
        redis_url=settings.redis_url or None,
        data_dir=Path(settings.data_dir),
        max_request_bytes=settings.max_request_bytes,
    )


def project_choice(extra_params: Any) -> bool | None:
    """The project's own `predict_on_import` from its extra params: True, False, or None when it says nothing."""
    params = project_params(extra_params)
    if PARAM not in params:
        return None
    value = params[PARAM]
    return value if isinstance(value, bool) else str(value).strip().lower() in _ON


def opted_in(config: ImportConfig, extra_params: Any) -> bool:
    """Whether a project with these extra params gets its imported tasks predicted."""
    choice = project_choice(extra_params)
    return config.for_all if choice is None else choice
