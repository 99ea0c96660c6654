"""The project's predictor as `/setup` builds it: the same engine, `model_version` and few-shot choice as `/predict`.

The one module of predict-on-import that knows how the model is built.
"""

from __future__ import annotations

from typing import Any

from ..model import NewModel
from ..predicting.predictor import Predictor
from ..settings import Settings


def use_settings(settings: Settings) -> None:
    """The process's settings for the models built here: a process entry sets them once, as `_wsgi.py` does."""
    NewModel.settings = settings


def project_predictor(project: int, label_config: str, extra_params: Any) -> Predictor:
    """A predictor for `project` with its config and ML extra params (instructions, language, few-shot form)."""
    return NewModel(label_config=label_config, project_id=str(project), extra_params=extra_params).predictor
