"""Evaluation runs: where the annotated tasks come from, and the two ways to score them.

Sources: a Label Studio JSON export or a project read through `label-studio-sdk`.
`evaluate_stored` scores the predictions stored with the tasks; `evaluate_fresh` runs
the backend's engine now on every annotated task, showing it K annotated examples
chosen from the other tasks (leave-one-out), so runs with K = 0 and K = 3 show the
few-shot gain.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from label_studio_sdk import LabelStudio

from ..learning.examples import Example, example_from_annotation
from ..learning.retrieval import FewShotExamples, FewShotForm, FixedExamples
from ..predicting.factory import build_predictor, schema_for
from ..settings import Settings
from .evaluation_report import Evaluation

logger = logging.getLogger(__name__)


def latest_annotation(task: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The newest non-cancelled annotation's results (what the human settled on)."""
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled") and a.get("result")]
    if not kept:
        return None
    newest = max(kept, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
    return newest["result"]


def stored_prediction(task: dict[str, Any], model_version: str | None) -> list[dict[str, Any]]:
    """The task's stored prediction of `model_version` (default: its newest one)."""
    predictions = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    if model_version:
        predictions = [p for p in predictions if p.get("model_version") == model_version]
    if not predictions:
        return []
    newest = max(predictions, key=lambda p: (str(p.get("created_at") or ""), p.get("id") or 0))
    return newest.get("result") or []


def load_export(path: Path) -> list[dict[str, Any]]:
    """Tasks of a Label Studio JSON export (the config is not in it: pass --config)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of tasks (Label Studio's JSON export)")
    return data


def load_project(url: str, api_key: str, project: int) -> tuple[list[dict[str, Any]], str]:
    """The project's tasks (with annotations and predictions) and its labeling config."""
    client = LabelStudio(base_url=url.rstrip("/"), api_key=api_key)
    label_config = client.projects.get(id=project).label_config
    tasks = []
    for task in client.tasks.list(project=project, fields="all", page_size=100):
        raw = task.dict() if hasattr(task, "dict") else dict(task)
        tasks.append({k: raw.get(k) for k in ("id", "data", "annotations", "predictions")})
    return tasks, label_config


def evaluate_stored(label_config: str, tasks: Sequence[dict[str, Any]], model_version: str | None) -> Evaluation:
    evaluation = Evaluation(schema_for(label_config))
    for task in tasks:
        if (gold := latest_annotation(task)) is not None:
            evaluation.add(gold, stored_prediction(task, model_version))
    return evaluation


def evaluate_fresh(label_config: str, tasks: Sequence[dict[str, Any]], settings: Settings) -> Evaluation:
    """Predict every annotated task now, with `settings.fewshot_k` few-shot examples from the other annotated tasks
    (the caller turns `fewshot_auto` off, so a run with k examples measures k)."""
    k = settings.fewshot_k
    schema = schema_for(label_config)
    annotated = [(t, gold) for t in tasks if (gold := latest_annotation(t)) is not None]
    pool: list[Example] = [
        e for t, gold in annotated if (e := example_from_annotation(schema, t, gold, settings.max_input_chars))
    ]
    form = FewShotForm(k, settings.fewshot_form)
    shots = FewShotExamples.of_pool(pool, form, settings.fewshot_max_chars) if k else None
    predictor = build_predictor(label_config, settings, examples=FixedExamples(shots), count=len(pool), form=form)
    tasks_now = [{"id": t.get("id"), "data": t.get("data") or {}} for t, _ in annotated]
    predictions = predictor.predict_batch(tasks_now, deadline=None)  # a command line: no Label Studio waiting
    evaluation = Evaluation(schema)
    for (_, gold), prediction in zip(annotated, predictions, strict=True):
        evaluation.add(gold, prediction.get("result") or [])
    return evaluation
