"""A chunk's round trips to Label Studio: read its tasks by id, post its predictions in one request.

Reading goes through the Data Manager's task list with the ids selected and the model
versions of each task's predictions included: one request says which tasks to predict,
which already have a prediction of this version, and which were deleted since the import.
Posting uses the project's prediction import (`import_predictions`): one request per
chunk, since Label Studio is slow to take predictions one request at a time.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from label_studio_sdk import LabelStudio, PredictionRequest
from label_studio_sdk.core.api_error import ApiError

POST_FAILED = "写入预测失败 (posting the prediction failed)"


@dataclass(frozen=True)
class Fetched:
    """A chunk's ids as Label Studio has them now: tasks to predict, and ids to skip."""

    tasks: list[dict[str, Any]]
    skipped: list[int]


def fetch(client: LabelStudio, project: int, ids: list[int], model_version: str) -> Fetched:
    """The tasks `ids` (data, and the versions of their predictions) in one Data Manager read."""
    query = json.dumps({"selectedItems": {"all": False, "included": ids}})
    found = {t.id: t for t in client.tasks.list(project=project, query=query, fields="all", page_size=len(ids),
                                                   include="id,data,predictions_model_versions")}
    tasks, skipped = [], []
    for task_id in ids:
        task = found.get(task_id)
        versions = str(getattr(task, "predictions_model_versions", "") or "").split(",")
        if task is None or model_version in versions:
            skipped.append(task_id)
        else:
            tasks.append({"id": task_id, "data": task.data or {}})
    return Fetched(tasks, skipped)


def post_predictions(client: LabelStudio, project: int, made: list[tuple[int, dict[str, Any]]]
                     ) -> tuple[list[int], Counter[str]]:
    """Post (task id, prediction) pairs: the ids posted, and why the others were not.

    One import request; when Label Studio refuses it (a task deleted meanwhile fails the
    whole request) the predictions go one by one. Any other error is raised: nothing was
    posted, and the tasks stay pending.
    """
    requests = [PredictionRequest(task=task_id, result=p["result"], score=p.get("score"),
                                  model_version=p["model_version"]) for task_id, p in made]
    if not requests:
        return [], Counter()
    try:
        client.projects.import_predictions(id=project, request=requests)
        return [r.task for r in requests], Counter()
    except ApiError as exc:
        if exc.status_code != 400:
            raise
    posted: list[int] = []
    errors: Counter[str] = Counter()
    for request in requests:
        try:
            client.predictions.create(task=request.task, result=request.result, score=request.score,
                                      model_version=request.model_version)
        except Exception as exc:  # noqa: BLE001 - one refused prediction must not stop the chunk
            errors[f"{POST_FAILED}: {type(exc).__name__}"] += 1
            continue
        posted.append(request.task)
    return posted, errors
