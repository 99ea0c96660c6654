"""The project's predictor as `/setup` builds it: the same engine, `model_version` and few-shot choice as `/predict`.

The one module of predict-on-import that knows how the model is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..jobs.batch import CHUNK_DEADLINE
from ..model import NewModel
from ..predictor import Predictor


def project_predictor(project: int, label_config: str, extra_params: Any) -> Predictor:
    """A predictor for `project` with its config and ML extra params (instructions, language, few-shot form)."""
    predictor = NewModel(label_config=label_config, project_id=str(project), extra_params=extra_params).predictor
    # No Label Studio request waits on an import chunk: only the LLM client's own timeouts bound it.
    predictor.settings = dataclasses.replace(predictor.settings, batch_deadline=CHUNK_DEADLINE)
    return predictor
