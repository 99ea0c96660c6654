"""Webhooks written by another worker process, for tests: imports only the store (starts fast when spawned)."""

from __future__ import annotations

import time
from pathlib import Path

from my_ml_backend.learning.store import SQLiteExampleStore, StoredAnnotation


def stored(annotation_id: int, task_id: int, label: str, text: str = "") -> StoredAnnotation:
    """What `record_event` stores for a sentiment annotation (see tests.test_learning.event)."""
    result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
    return StoredAnnotation(annotation_id, task_id, {"text": text or f"评论 {task_id}"}, result, time.time())


def upsert(path: str, project: str, annotation_id: int, label: str) -> None:
    SQLiteExampleStore(Path(path)).upsert(project, stored(annotation_id, annotation_id, label))


def delete(path: str, project: str, annotation_id: int, _label: str = "") -> None:
    SQLiteExampleStore(Path(path)).delete(project, [annotation_id])


def upsert_many(path: str, project: str, start: int) -> None:
    """100 webhooks, one write each."""
    store = SQLiteExampleStore(Path(path))
    for i in range(start, start + 100):
        store.upsert(project, stored(i, i, "正面"))
