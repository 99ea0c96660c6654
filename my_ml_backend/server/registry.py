"""Models by (project, labeling config), and the 400 answer for requests Label Studio would never send.

label-studio-ml 1.0.9 keeps one "current model" for the whole server; with Label
Studio 1.23 that answers a second project with the first project's config. The
registry keeps one model per (project, config hash), least recently used first out.
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

    def __init__(self, model_class: type, size: int = 32) -> None:
        self.model_class = model_class
        self.size = size
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._configs: dict[str, str] = {}  # last config seen per project, for requests without one
        self._lock = threading.Lock()

    def get(self, project: str, label_config: str | None) -> Any:
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
            self._configs[project] = label_config
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return model

    def models(self) -> list[tuple[str, Any]]:
        """(project, model) for every model held now, least recently used first (for the status page)."""
        with self._lock:
            return [(project, model) for (project, _), model in self._models.items()]
