"""What `fit()` does: keep the project's annotations as examples, and turn them into a pool.

Label Studio tells us about annotations through webhooks (created, updated, deleted)
and the Train button (START_TRAINING). Each event is one atomic write to the example
store; START_TRAINING additionally re-reads every annotation of the project through
`label-studio-sdk` (when LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are set), which
repairs anything a missed webhook left out.

`model_version` follows the example set by buckets (see `examples_bucket`), so Label
Studio re-predicts when the examples change meaningfully, not on every annotation.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..labeling.schema import LabelingSchema
from .store import ExampleStore, StoredAnnotation

logger = logging.getLogger(__name__)

SAVE_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
DELETE_EVENTS = frozenset({"ANNOTATION_DELETED", "ANNOTATIONS_DELETED"})
MAX_BUCKET = 64
RESYNC_WRITE = 500  # changed annotations written together while re-reading a project (one transaction each)


def examples_bucket(count: int) -> int:
    """0 for no example, else the largest power of two <= count, capped at 64.

    The version changes at 1, 2, 4, 8, 16, 32 and 64 stored examples: early examples
    change answers most; past 64 the per-task selection barely changes.
    """
    if count <= 0:
        return 0
    bucket = 1
    while bucket * 2 <= min(count, MAX_BUCKET):
        bucket *= 2
    return bucket


def _task_fields(schema: LabelingSchema, task: dict[str, Any]) -> dict[str, Any]:
    data = task.get("data") or {}
    return {k: data[k] for k in schema.data_keys if k in data}


def _annotation_item(schema: LabelingSchema, task: dict[str, Any], annotation: dict[str, Any]) -> StoredAnnotation:
    return StoredAnnotation(
        annotation_id=int(annotation["id"]),
        task_id=int(task.get("id") or annotation.get("task")),
        data=_task_fields(schema, task),
        results=list(annotation.get("result") or []),
        updated=time.time(),
    )


def record_event(store: ExampleStore, schema: LabelingSchema, project: str, event: str, data: dict[str, Any]) -> str:
    """Apply one annotation webhook to the store; returns what was done (for the log)."""
    if event in SAVE_EVENTS:
        annotation, task = data.get("annotation") or {}, data.get("task") or {}
        if annotation.get("id") is None:
            return "no annotation in event"
        if annotation.get("was_cancelled") or not annotation.get("result"):
            store.delete(project, [int(annotation["id"])])  # a skipped task teaches nothing
            return f"annotation {annotation['id']} skipped/empty: not an example"
        store.upsert(project, _annotation_item(schema, task, annotation))
        return f"annotation {annotation['id']} of task {task.get('id')} stored"
    if event in DELETE_EVENTS:
        ids = [int(a["id"]) for a in data.get("annotations") or [] if isinstance(a, dict) and a.get("id") is not None]
        if isinstance(data.get("annotation"), dict) and data["annotation"].get("id") is not None:
            ids.append(int(data["annotation"]["id"]))
        return f"{store.delete(project, ids)} of {len(ids)} annotation(s) removed"
    return "nothing to store"


def resync(store: ExampleStore, schema: LabelingSchema, project: str, url: str, api_key: str) -> str:
    """Re-read all annotations of the project from Label Studio (Train button)."""
    from label_studio_sdk import LabelStudio

    started = time.time()
    client = LabelStudio(base_url=url.rstrip("/"), api_key=api_key)
    known = {s.annotation_id: (s.task_id, s.data, s.results) for s in store.all(project)}
    seen: set[int] = set()
    changed: list[StoredAnnotation] = []
    written = 0
    for task in client.tasks.list(project=int(project), fields="all", only_annotated=True, page_size=100):
        raw = task.dict()
        for annotation in raw.get("annotations") or []:
            if annotation.get("was_cancelled") or not annotation.get("result"):
                continue
            item = _annotation_item(schema, raw, annotation)
            seen.add(item.annotation_id)
            # An annotation stored as it is stays untouched: rewriting all of them made every worker's index
            # apply the whole project again after each press of Train.
            if known.get(item.annotation_id) != (item.task_id, item.data, item.results):
                changed.append(item)
            if len(changed) >= RESYNC_WRITE:
                store.upsert_many(project, changed)
                written, changed = written + len(changed), []
    store.upsert_many(project, changed)
    written += len(changed)
    # Gone from Label Studio, and not written by a webhook while we were reading: removed.
    stale = [s.annotation_id for s in store.all(project) if s.annotation_id not in seen and s.updated < started]
    removed = store.delete(project, stale)
    return f"resynced {len(seen)} annotation(s) from Label Studio, {written} new or changed, {removed} stale removed"

