"""The Label Studio ML backend: an LLM pre-annotates the text of each task.

The story, in Label Studio's order:
- setup: read the project's labeling config (no network call: Label Studio gives
  `/setup` 3 s) and derive the `model_version` that identifies these predictions;
- predict: one chat call per task, answers mapped to results valid for the config;
- fit: receive annotation and training events (kept for the few-shot work to come).
"""

from __future__ import annotations

import logging
from typing import Any

from label_studio_ml.model import LabelStudioMLBase

from .engine import build_predictor
from .settings import load_settings

logger = logging.getLogger(__name__)

class NewModel(LabelStudioMLBase):
    """LLM pre-annotation for Text/HyperText/Paragraphs objects."""

    # label-studio-ml 1.0.9 lists neither START_TRAINING (the Train button) nor
    # ANNOTATIONS_DELETED (what Label Studio really sends); both must reach fit().
    TRAIN_EVENTS = (
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATION_DELETED",
        "ANNOTATIONS_DELETED",
        "START_TRAINING",
    )

    def __init__(self, label_config: str | None = None, train_output: dict | None = None, **kwargs: Any) -> None:
        super().__init__(label_config=label_config, train_output=train_output, **kwargs)
        self.setup()

    def setup(self) -> None:
        """Parse the config and fix this model's version; cheap and offline."""
        self.settings = load_settings()
        self.predictor = build_predictor(self.label_config, self.settings)
        self.schema = self.predictor.schema
        self.model_version = self.predictor.model_version
        logger.debug(
            "Setup: model=%s url=%s version=%s texts=%s controls=%s",
            self.settings.model,
            self.settings.base_url,
            self.model_version,
            [f"{s.name}<-${s.data_key}" for s in self.schema.sources],
            [f"{t.name}:{t.tag}" for t in self.schema.targets],
        )

    def predict(self, tasks: list[dict[str, Any]], context: dict | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """One prediction per task, in order (failed tasks carry an `error` and no result)."""
        return self.predictor.predict_batch(tasks)

    def fit(self, tasks: Any = (), workdir: str | None = None, event: str | None = None, **kwargs: Any) -> dict:
        """Accept Label Studio's annotation and training webhooks.

        Storing annotated examples for few-shot prompts is a later step; for now the
        event is acknowledged so the Train button and annotation webhooks never fail.
        """
        data = kwargs.get("data") or {}
        project = data.get("project") or {}
        project_id = project.get("id") if isinstance(project, dict) else project
        logger.info("收到事件 (event received): %s, project %s", event, project_id)
        return {"event": event, "model_version": self.model_version}
