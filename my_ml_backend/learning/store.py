"""Annotations kept per project, to show the model as few-shot examples.

What is kept is the raw material (the task's text fields and the annotation's
results), not prompts: the labeling config may change later, and examples are
rebuilt for the current config each time they are used.

Stores, chosen like the response cache's (`REDIS_URL` or SQLite in `DATA_DIR`):
- `SQLiteExampleStore`: `examples.sqlite3`, one row per (project, annotation); a
  separate file from the cache so that clearing the cache never loses examples;
  WAL and a busy timeout make concurrent webhooks from several workers safe;
- `RedisExampleStore`: one hash per project, one field per annotation.
Each write is a single atomic upsert or delete, so concurrent webhooks lose nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..settings import Settings
from ..storage import redis_db
from ..storage.sqlite_db import SharedSQLite

logger = logging.getLogger(__name__)

SQLITE_FILE = "examples.sqlite3"
REDIS_PREFIX = "llm-preannotation:examples:"


@dataclass(frozen=True)
class StoredAnnotation:
    annotation_id: int
    task_id: int
    data: dict[str, Any]
    results: list[dict[str, Any]]
    updated: float

    def dumps(self) -> str:
        return json.dumps(
            {"task_id": self.task_id, "data": self.data, "results": self.results, "updated": self.updated},
            ensure_ascii=False,
        )

    @classmethod
    def loads(cls, annotation_id: int, raw: str | bytes) -> StoredAnnotation:
        d = json.loads(raw)
        return cls(int(annotation_id), int(d["task_id"]), d["data"], d["results"], float(d["updated"]))


class ExampleStore(Protocol):
    description: str

    def upsert(self, project: str, item: StoredAnnotation) -> None: ...

    def delete(self, project: str, annotation_ids: list[int]) -> int: ...

    def all(self, project: str) -> list[StoredAnnotation]: ...

    def counts(self) -> dict[str, int]: ...


class SQLiteExampleStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"SQLite {self.path}"
        self._db = SharedSQLite(
            self.path,
            [
                "CREATE TABLE IF NOT EXISTS examples (project TEXT NOT NULL, annotation_id INTEGER NOT NULL,"
                " payload TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (project, annotation_id))"
            ],
        )

    def upsert(self, project: str, item: StoredAnnotation) -> None:
        with self._db.connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO examples (project, annotation_id, payload, updated) VALUES (?, ?, ?, ?)",
                (project, item.annotation_id, item.dumps(), item.updated),
            )

    def delete(self, project: str, annotation_ids: list[int]) -> int:
        if not annotation_ids:
            return 0
        marks = ",".join("?" * len(annotation_ids))
        with self._db.connect() as conn:
            cursor = conn.execute(
                f"DELETE FROM examples WHERE project = ? AND annotation_id IN ({marks})", (project, *annotation_ids)
            )
            return cursor.rowcount

    def all(self, project: str) -> list[StoredAnnotation]:
        with self._db.connect() as conn:
            rows = conn.execute(
                "SELECT annotation_id, payload FROM examples WHERE project = ? ORDER BY annotation_id", (project,)
            ).fetchall()
        return [StoredAnnotation.loads(a, p) for a, p in rows]

    def counts(self) -> dict[str, int]:
        """Stored examples per project (for the status page)."""
        with self._db.connect() as conn:
            return dict(conn.execute("SELECT project, COUNT(*) FROM examples GROUP BY project").fetchall())

    def close(self) -> None:
        self._db.close()


class RedisExampleStore:
    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        self.prefix = prefix
        self.description = redis_db.describe(url)
        self._redis = redis_db.connect(url)

    def upsert(self, project: str, item: StoredAnnotation) -> None:
        self._redis.hset(self.prefix + project, str(item.annotation_id), item.dumps())

    def delete(self, project: str, annotation_ids: list[int]) -> int:
        if not annotation_ids:
            return 0
        return int(self._redis.hdel(self.prefix + project, *[str(a) for a in annotation_ids]))

    def all(self, project: str) -> list[StoredAnnotation]:
        raw = self._redis.hgetall(self.prefix + project)
        return sorted((StoredAnnotation.loads(int(k), v) for k, v in raw.items()), key=lambda s: s.annotation_id)

    def counts(self) -> dict[str, int]:
        """Stored examples per project (for the status page); SCAN, so Redis is never blocked."""
        keys = [k.decode() if isinstance(k, bytes) else k for k in self._redis.scan_iter(self.prefix + "*")]
        return {k[len(self.prefix) :]: int(self._redis.hlen(k)) for k in keys}


_stores: dict[str, ExampleStore] = {}
_stores_lock = threading.Lock()


def open_example_store(settings: Settings) -> ExampleStore | None:
    """The store `settings` ask for, one per location per process; None if it cannot be opened."""
    where = settings.redis_url or str(settings.data_dir / SQLITE_FILE)
    with _stores_lock:
        if where in _stores:
            return _stores[where]
        try:
            store: ExampleStore = (
                RedisExampleStore(where) if settings.redis_url else SQLiteExampleStore(Path(where))
            )
        except Exception as exc:  # noqa: BLE001 - predictions still work without examples
            logger.warning("无法打开示例库，不使用少样本示例 (cannot open the example store): %s", exc)
            return None
        logger.info("标注示例库 (example store): %s", store.description)
        _stores[where] = store
        return store


def now() -> float:
    return time.time()
