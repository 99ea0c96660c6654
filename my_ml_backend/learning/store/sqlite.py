"""Examples in one SQLite file in `DATA_DIR` (`examples.sqlite3`), one row per (project, annotation).

A separate file from the response cache, so that clearing the cache never loses examples;
WAL and a busy timeout make concurrent webhooks from several workers safe (`storage.sqlite_db`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...storage.sqlite_db import SharedSQLite
from .base import Changes, ParsedSnapshots, StoredAnnotation

SQLITE_FILE = "examples.sqlite3"


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
        with self._db.transaction() as conn:
            yield conn

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
