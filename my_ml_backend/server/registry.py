"""Models by (project, labeling config), and the 400 answer for requests Label Studio would never send.

The stock label-studio-ml app keeps one "current model" for the whole server, which answers
a second project with the first project's config. The registry keeps one model per
(project, config hash), least recently used first out. It is bounded by count and by the
configs' total size: a parsed config takes many times its text's size in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from ..labeling.schema import config_hash


class BadRequest(Exception):
    """A request Label Studio would never send; answered with HTTP 400."""


class ModelRegistry:
    """Models by (project, labeling config), so interleaved projects never mix configs."""

    def __init__(
        self, model_class: type, size: int = 32, max_chars: int = 4_000_000, max_config_chars: int = 1_000_000
    ) -> None:
        self.model_class = model_class
        self.size = size
        self.max_chars = max_chars  # total config characters kept parsed (the newest model always stays)
        self.max_config_chars = max_config_chars
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._sizes: dict[tuple[str, str], int] = {}
        self._configs: dict[str, str] = {}  # config of a live model per project, for requests without one
        self._lock = threading.Lock()

    def get(self, project: str, label_config: str | None) -> Any:
        if label_config and len(label_config) > self.max_config_chars:
            raise BadRequest(
                f"标注配置过大：{len(label_config)} 字符，上限 {self.max_config_chars} "
                f"(labeling config too large: over MAX_CONFIG_CHARS={self.max_config_chars})"
            )
        with self._lock:
            if not label_config:
                label_config = self._configs.get(project)
            if not label_config:
                raise BadRequest("缺少 label_config，请先调用 /setup (no labeling config: call /setup first)")
            key = (project, config_hash(label_config))
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
        try:
            LabelInterface(label_config)
        except Exception as exc:  # noqa: BLE001 - an unparsable config is the caller's error
            raise BadRequest(f"标注配置无法解析 (invalid labeling config): {exc}") from None
        model = self.model_class(label_config=label_config, project_id=project)
        with self._lock:
            self._models[key] = model
            self._sizes[key] = len(label_config)
            self._configs[project] = label_config
            while len(self._models) > 1 and (
                len(self._models) > self.size or sum(self._sizes.values()) > self.max_chars
            ):
                (old_project, old_hash), _ = self._models.popitem(last=False)
                del self._sizes[(old_project, old_hash)]
                kept = self._configs.get(old_project)
                if kept is not None and config_hash(kept) == old_hash:
                    del self._configs[old_project]
        return model

    def items(self) -> list[tuple[tuple[str, str], Any]]:
        """((project, config hash), model) pairs, oldest first."""
        with self._lock:
            return list(self._models.items())
