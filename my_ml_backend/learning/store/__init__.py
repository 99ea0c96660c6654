"""Annotations kept per project, to show the model as few-shot examples.

What is kept is the raw material (the task's text fields and the annotation's
results), not prompts: the labeling config may change later, and examples are
rebuilt for the current config each time they are used.

Backends, chosen like the response cache's: `RedisExampleStore` when `REDIS_URL` is set,
else `SQLiteExampleStore` in `DATA_DIR`. Each write is a single atomic upsert or delete,
so concurrent webhooks lose nothing.

Every write also bumps the project's version (a change counter in the store) and notes
which annotation changed at that version, so a process holding an in-memory index
(`learning.index`) notices what another worker or replica wrote and fetches only that;
counts come from the store without loading the examples. Small per-project values
(the automatic few-shot choice) live next to the examples (`get_meta`/`set_meta`).
"""

from __future__ import annotations

from pathlib import Path

from ...settings import Settings
from ...storage.fallback import open_once
from .base import Changes, ExampleStore, StoredAnnotation
from .redis import REDIS_PREFIX, RedisExampleStore
from .sqlite import SQLITE_FILE, SQLiteExampleStore

__all__ = [
    "REDIS_PREFIX", "SQLITE_FILE", "Changes", "ExampleStore", "RedisExampleStore", "SQLiteExampleStore",
    "StoredAnnotation", "open_example_store",
]

_OPENING = (("标注示例库", "example store"), ("不使用少样本示例", "no few-shot examples"))


def open_example_store(settings: Settings) -> ExampleStore | None:
    """The store `settings` ask for, one per location per process; None if it cannot be opened."""
    if settings.redis_url:
        url = settings.redis_url
        return open_once(("example store", url), lambda: RedisExampleStore(url), lambda: None, *_OPENING)
    path = Path(settings.data_dir) / SQLITE_FILE
    return open_once(("example store", str(path)), lambda: SQLiteExampleStore(path), lambda: None, *_OPENING)
