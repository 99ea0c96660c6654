"""The Label Studio prediction items, built last from typed answers: nothing hidden rides in them."""

from __future__ import annotations

from typing import Any

from ..labeling.answers import TaskAnswer
from ..llm.errors import PredictionError


def prediction_item(answer: TaskAnswer, model_version: str) -> dict[str, Any]:
    return {"result": answer.regions, "score": answer.score, "model_version": model_version}


def failed_item(err: PredictionError, model_version: str) -> dict[str, Any]:
    """The item for a task that could not be predicted: no `result` key on purpose, so Label Studio stores
    nothing for this task and the next "Retrieve predictions" tries it again (an item with `result: []`
    would be stored under this model_version and the task skipped forever after)."""
    return {"model_version": model_version, "score": 0.0, "error": err.message}


def withheld_item(answer: TaskAnswer, model_version: str) -> dict[str, Any]:
    """The item of a task scored under LLM_MIN_SCORE: an empty result Label Studio stores under this version (the
    task is not asked again), so annotators start it from scratch instead of anchoring on a likely wrong guess."""
    return {"result": [], "score": answer.score, "model_version": model_version}
