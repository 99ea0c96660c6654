"""The ids of a TASKS_CREATED webhook body, read as a stream.

Label Studio sends every created task of an import in the body (up to its
`WEBHOOK_BATCH_SIZE` tasks per webhook), data included, so one body can be larger
than `MAX_REQUEST_MB`. Only the project id and the task ids are kept: the
body is parsed as it arrives (ijson, the C backend when available) and never held
whole, so its size costs time, not memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import IO

import ijson

ACTION = "TASKS_CREATED"
MAX_IDS = 100_000  # ids kept from one body; the webhook's own batches are far smaller
# Label Studio writes `{"action": "...", ...}` first: enough to tell an import from an annotation event.
LEADING_ACTION = re.compile(rb'\A\s*\{\s*"action"\s*:\s*"([A-Z_]{1,40})"')


class PayloadError(ValueError):
    """The body is not a TASKS_CREATED webhook this backend can read."""


@dataclass
class CreatedTasks:
    """What one TASKS_CREATED webhook said: the project and the ids of its new tasks."""

    project: int | None = None
    task_ids: list[int] = field(default_factory=list)
    action: str = ""
    dropped: int = 0  # ids past MAX_IDS (not kept)


def _positive(value: object) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_created_tasks(stream: IO[bytes], max_ids: int = MAX_IDS) -> CreatedTasks:
    """The action, project id and task ids of the JSON body `stream` (read to the end, in order)."""
    found = CreatedTasks()
    task_project: int | None = None
    try:
        for prefix, event, value in ijson.parse(stream, use_float=True):
            if event != "number" and event != "string":
                continue
            if prefix == "tasks.item.id":
                if (task_id := _positive(value)) is not None:
                    if len(found.task_ids) < max_ids:
                        found.task_ids.append(task_id)
                    else:
                        found.dropped += 1
            elif prefix == "project.id":
                found.project = _positive(value)
            elif prefix == "tasks.item.project" and task_project is None:
                task_project = _positive(value)
            elif prefix == "action" and isinstance(value, str):
                found.action = value
    except ijson.JSONError as exc:
        raise PayloadError(f"请求体不是有效的 JSON (body is not valid JSON): {str(exc)[:120]}") from None
    if found.project is None:
        found.project = task_project
    return found


def leading_action(head: bytes) -> str | None:
    """The action named first in a body starting with `head`, the way Label Studio writes it (else None)."""
    match = LEADING_ACTION.match(head)
    return match.group(1).decode() if match else None
