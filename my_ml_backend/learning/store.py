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

Every write also bumps the project's version (a change counter in the store) and notes
which annotation changed at that version, so a process holding an in-memory index
(`learning.index`) notices what another worker or replica wrote and fetches only that;
counts come from the store without loading the examples. Small per-project values
(the automatic few-shot choice) live next to the examples (`get_meta`/`set_meta`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


@dataclass(frozen=True)
class Changes:
    """What changed in a project after a version: rows now stored, and annotation ids now gone."""

    version: int
    stored: list[StoredAnnotation]
    removed: list[int]


class ExampleStore(Protocol):
    description: str

    def upsert(self, project: str, item: StoredAnnotation) -> None: ...

    def upsert_many(self, project: str, items: Iterable[StoredAnnotation]) -> None: ...

    def delete(self, project: str, annotation_ids: list[int]) -> int: ...

    def all(self, project: str) -> list[StoredAnnotation]: ...

    def snapshot(self, project: str) -> tuple[int, list[StoredAnnotation]]: ...

    def raw_snapshot(self, project: str) -> tuple[int, list[tuple[int, str | bytes]]]: ...

    def version(self, project: str) -> int: ...

    def count(self, project: str) -> int: ...

    def changes(self, project: str, since: int) -> Changes: ...

    def get_meta(self, project: str, key: str) -> str | None: ...

    def set_meta(self, project: str, key: str, value: str) -> None: ...

    def counts(self) -> dict[str, int]: ...


class ParsedSnapshots:
    """`all` and `snapshot` of a store, parsed from its `raw_snapshot` (one read, so version and rows agree)."""

    def raw_snapshot(self, project: str) -> tuple[int, list[tuple[int, str | bytes]]]:
        raise NotImplementedError

    def all(self, project: str) -> list[StoredAnnotation]:
        return self.snapshot(project)[1]

    def snapshot(self, project: str) -> tuple[int, list[StoredAnnotation]]:
        """The version and every row."""
        version, rows = self.raw_snapshot(project)
        return version, [StoredAnnotation.loads(a, p) for a, p in rows]


class SQLiteExampleStore(ParsedSnapshots):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"SQLite {self.path}"
        self._db = SharedSQLite(
            self.path,
            [
                "CREATE TABLE IF NOT EXISTS examples (project TEXT NOT NULL, annotation_id INTEGER NOT NULL,"
                " payload TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (project, annotation_id))",
                # One row per annotation ever written: the version (seq) of its last change.
                "CREATE TABLE IF NOT EXISTS changes (project TEXT NOT NULL, annotation_id INTEGER NOT NULL,"
                " seq INTEGER NOT NULL, PRIMARY KEY (project, annotation_id))",
                "CREATE INDEX IF NOT EXISTS changes_seq ON changes (project, seq)",
                "CREATE TABLE IF NOT EXISTS meta (project TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                " PRIMARY KEY (project, key))",
            ],
        )

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction (BEGIN IMMEDIATE: the version is read and bumped atomically)."""
        with self._db.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _note_change(conn: Any, project: str, annotation_ids: Iterable[int]) -> None:
        seq = SQLiteExampleStore._version(conn, project)
        conn.executemany(
            "INSERT OR REPLACE INTO changes (project, annotation_id, seq) VALUES (?, ?, ?)",
            [(project, a, seq + n) for n, a in enumerate(annotation_ids, start=1)],
        )

    def upsert(self, project: str, item: StoredAnnotation) -> None:
        self.upsert_many(project, [item])

    def upsert_many(self, project: str, items: Iterable[StoredAnnotation]) -> None:
        rows = [(project, i.annotation_id, i.dumps(), i.updated) for i in items]
        if not rows:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO examples (project, annotation_id, payload, updated) VALUES (?, ?, ?, ?)", rows
            )
            self._note_change(conn, project, [r[1] for r in rows])

    def delete(self, project: str, annotation_ids: list[int]) -> int:
        if not annotation_ids:
            return 0
        marks = ",".join("?" * len(annotation_ids))
        with self._write() as conn:
            gone = [
                a
                for (a,) in conn.execute(
                    f"SELECT annotation_id FROM examples WHERE project = ? AND annotation_id IN ({marks})",
                    (project, *annotation_ids),
                )
            ]
            if gone:
                conn.execute(
                    f"DELETE FROM examples WHERE project = ? AND annotation_id IN ({marks})", (project, *annotation_ids)
                )
                self._note_change(conn, project, gone)
            return len(gone)

    def raw_snapshot(self, project: str) -> tuple[int, list[tuple[int, str | bytes]]]:
        """Like `snapshot`, rows not parsed yet: (annotation id, payload); a big project is parsed in chunks."""
        with self._db.connect() as conn:
            conn.execute("BEGIN")
            try:
                version = self._version(conn, project)
                rows = conn.execute(
                    "SELECT annotation_id, payload FROM examples WHERE project = ? ORDER BY annotation_id", (project,)
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        return version, rows

    @staticmethod
    def _version(conn: Any, project: str) -> int:
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes WHERE project = ?", (project,)).fetchone()
        return int(row[0])

    def version(self, project: str) -> int:
        with self._db.connect() as conn:
            return self._version(conn, project)

    def count(self, project: str) -> int:
        with self._db.connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM examples WHERE project = ?", (project,)).fetchone()[0])

    def changes(self, project: str, since: int) -> Changes:
        with self._db.connect() as conn:
            conn.execute("BEGIN")
            try:
                version = self._version(conn, project)
                ids = [
                    a
                    for (a,) in conn.execute(
                        "SELECT annotation_id FROM changes WHERE project = ? AND seq > ?", (project, since)
                    )
                ]
                rows = conn.execute(
                    "SELECT e.annotation_id, e.payload FROM changes c JOIN examples e"
                    " ON e.project = c.project AND e.annotation_id = c.annotation_id"
                    " WHERE c.project = ? AND c.seq > ?",
                    (project, since),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        stored = [StoredAnnotation.loads(a, p) for a, p in rows]
        kept = {s.annotation_id for s in stored}
        return Changes(version, stored, [a for a in ids if a not in kept])

    def get_meta(self, project: str, key: str) -> str | None:
        with self._db.connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE project = ? AND key = ?", (project, key)).fetchone()
        return row[0] if row else None

    def set_meta(self, project: str, key: str, value: str) -> None:
        with self._db.connect() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (project, key, value) VALUES (?, ?, ?)", (project, key, value))

    def counts(self) -> dict[str, int]:
        """Stored examples per project (for the status page)."""
        with self._db.connect() as conn:
            return dict(conn.execute("SELECT project, COUNT(*) FROM examples GROUP BY project").fetchall())

    def close(self) -> None:
        self._db.close()


# KEYS: examples hash, version counter, changes sorted set (member: annotation id, score: version).
# ARGV: "set" followed by id/payload pairs, or "del" followed by ids. Atomic: a reader never sees
# a version whose change is not noted yet. Returns how many fields were removed (for "del").
_REDIS_WRITE = """
local removed = 0
if ARGV[1] == "set" then
  for i = 2, #ARGV, 2 do
    redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call("ZADD", KEYS[3], redis.call("INCR", KEYS[2]), ARGV[i])
  end
else
  for i = 2, #ARGV do
    if redis.call("HDEL", KEYS[1], ARGV[i]) == 1 then
      removed = removed + 1
      redis.call("ZADD", KEYS[3], redis.call("INCR", KEYS[2]), ARGV[i])
    end
  end
end
return removed
"""


class RedisExampleStore(ParsedSnapshots):
    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        self.prefix = prefix
        self.description = redis_db.describe(url)
        self._redis = redis_db.connect(url)
        self._write = self._redis.register_script(_REDIS_WRITE)

    def _keys(self, project: str) -> list[str]:
        base = self.prefix + project
        return [base, base + ":version", base + ":changes"]

    def upsert(self, project: str, item: StoredAnnotation) -> None:
        self.upsert_many(project, [item])

    def upsert_many(self, project: str, items: Iterable[StoredAnnotation]) -> None:
        args: list[str] = []
        for item in items:
            args += [str(item.annotation_id), item.dumps()]
        for start in range(0, len(args), 2000):  # bounded script calls: Redis blocks while one runs
            self._write(keys=self._keys(project), args=["set", *args[start : start + 2000]])

    def delete(self, project: str, annotation_ids: list[int]) -> int:
        if not annotation_ids:
            return 0
        return int(self._write(keys=self._keys(project), args=["del", *[str(a) for a in annotation_ids]]))

    def raw_snapshot(self, project: str) -> tuple[int, list[tuple[int, str | bytes]]]:
        rows, version = self._redis.pipeline(transaction=True).hgetall(self._keys(project)[0]).get(
            self._keys(project)[1]
        ).execute()
        return int(version or 0), sorted((int(k), v) for k, v in rows.items())

    def version(self, project: str) -> int:
        return int(self._redis.get(self._keys(project)[1]) or 0)

    def count(self, project: str) -> int:
        return int(self._redis.hlen(self._keys(project)[0]))

    def changes(self, project: str, since: int) -> Changes:
        examples, version_key, changes_key = self._keys(project)
        version, ids = self._redis.pipeline(transaction=True).get(version_key).zrangebyscore(
            changes_key, f"({since}", "+inf"
        ).execute()
        ids = [int(a) for a in ids]
        payloads = self._redis.hmget(examples, [str(a) for a in ids]) if ids else []
        stored = [StoredAnnotation.loads(a, p) for a, p in zip(ids, payloads, strict=True) if p is not None]
        removed = [a for a, p in zip(ids, payloads, strict=True) if p is None]
        return Changes(int(version or 0), stored, removed)

    def get_meta(self, project: str, key: str) -> str | None:
        value = self._redis.hget(self.prefix + project + ":meta", key)
        return value.decode() if isinstance(value, bytes) else value

    def set_meta(self, project: str, key: str, value: str) -> None:
        self._redis.hset(self.prefix + project + ":meta", key, value)

    def counts(self) -> dict[str, int]:
        """Stored examples per project (for the status page); SCAN, so Redis is never blocked."""
        keys = [k.decode() if isinstance(k, bytes) else k for k in self._redis.scan_iter(self.prefix + "*")]
        # only the examples hashes: a project's `:version`, `:changes` and `:meta` keys share the prefix
        return {k[len(self.prefix) :]: int(self._redis.hlen(k)) for k in keys if ":" not in k[len(self.prefix) :]}


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
