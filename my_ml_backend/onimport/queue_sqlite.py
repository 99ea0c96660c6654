"""The import queue in one SQLite file in `DATA_DIR`, shared by the processes of one machine."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..storage.sqlite_db import SharedSQLite
from .queue import KEEP_SECONDS, SHOWN_JOBS, ImportJob, now

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS import_task (project INTEGER NOT NULL, task INTEGER NOT NULL, job INTEGER NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending', PRIMARY KEY (project, task))",
    "CREATE INDEX IF NOT EXISTS import_task_state ON import_task (project, state, task)",
    "CREATE TABLE IF NOT EXISTS import_job (id INTEGER PRIMARY KEY AUTOINCREMENT, project INTEGER NOT NULL,"
    " started REAL NOT NULL, updated REAL NOT NULL, finished REAL, total INTEGER NOT NULL DEFAULT 0,"
    " posted INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,"
    " calls INTEGER NOT NULL DEFAULT 0, busy REAL NOT NULL DEFAULT 0, waiting_until REAL,"
    " next_try REAL NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS import_job_open ON import_job (project, finished)",
    "CREATE TABLE IF NOT EXISTS import_error (job INTEGER NOT NULL, message TEXT NOT NULL, count INTEGER NOT NULL,"
    " PRIMARY KEY (job, message))",
    "CREATE TABLE IF NOT EXISTS import_lease (project INTEGER PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS import_project (project INTEGER PRIMARY KEY, extra_params TEXT NOT NULL,"
    " updated REAL NOT NULL)",
)
JOB_COLUMNS = ("id, project, started, updated, finished, total, posted, skipped, failed, calls, busy, waiting_until,"
               " next_try, note")


class SQLiteImportQueue:
    """`ImportQueue` over `SharedSQLite` (WAL; each method one transaction)."""

    def __init__(self, path: Path) -> None:
        self.db = SharedSQLite(path, SCHEMA)

    def add(self, project: int, task_ids: Sequence[int]) -> int:
        stamp = now()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT id FROM import_job WHERE project = ? AND finished IS NULL",
                               (project,)).fetchone()
            job = row[0] if row else conn.execute(
                "INSERT INTO import_job (project, started, updated) VALUES (?, ?, ?)", (project, stamp, stamp)
            ).lastrowid
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO import_task (project, task, job) VALUES (?, ?, ?)",
                             [(project, task_id, job) for task_id in task_ids])
            added = conn.total_changes - before
            if added:
                conn.execute("UPDATE import_job SET total = total + ?, updated = ? WHERE id = ?",
                             (added, stamp, job))
            elif not row:
                conn.execute("DELETE FROM import_job WHERE id = ?", (job,))
            self._forget_old(conn, stamp)
        return added

    @staticmethod
    def _forget_old(conn: sqlite3.Connection, stamp: float) -> None:
        old = "SELECT id FROM import_job WHERE finished IS NOT NULL AND finished < ?"
        cutoff = (stamp - KEEP_SECONDS,)
        conn.execute(f"DELETE FROM import_task WHERE job IN ({old})", cutoff)
        conn.execute(f"DELETE FROM import_error WHERE job IN ({old})", cutoff)
        conn.execute("DELETE FROM import_job WHERE finished IS NOT NULL AND finished < ?", cutoff)

    def pending(self, project: int, limit: int) -> list[int]:
        with self.db.connect() as conn:
            rows = conn.execute("SELECT task FROM import_task WHERE project = ? AND state = 'pending' ORDER BY task"
                                " LIMIT ?", (project, limit)).fetchall()
        return [r[0] for r in rows]

    def settle(self, project: int, posted: Sequence[int] = (), skipped: Sequence[int] = (), failed: Sequence[int] = (),
               errors: Mapping[str, int] | None = None, calls: int = 0, busy: float = 0.0) -> None:
        with self.db.transaction() as conn:
            counts = {}
            for state, ids in (("posted", posted), ("skipped", skipped), ("failed", failed)):
                before = conn.total_changes
                conn.executemany("UPDATE import_task SET state = ? WHERE project = ? AND task = ?"
                                 " AND state = 'pending'", [(state, project, i) for i in ids])
                counts[state] = conn.total_changes - before
            row = conn.execute("SELECT id FROM import_job WHERE project = ? AND finished IS NULL",
                               (project,)).fetchone()
            if row:
                conn.execute("UPDATE import_job SET posted = posted + ?, skipped = skipped + ?,"
                             " failed = failed + ?, calls = calls + ?, busy = busy + ?, updated = ? WHERE id = ?",
                             (counts["posted"], counts["skipped"], counts["failed"], calls, busy, now(), row[0]))
                for message, count in (errors or {}).items():
                    conn.execute("INSERT INTO import_error VALUES (?, ?, ?) ON CONFLICT (job, message)"
                                 " DO UPDATE SET count = count + excluded.count", (row[0], message, count))

    def due(self, stamp: float) -> list[int]:
        with self.db.connect() as conn:
            rows = conn.execute(
                "SELECT j.project FROM import_job j WHERE j.finished IS NULL AND j.next_try <= ?"
                " AND EXISTS (SELECT 1 FROM import_task t WHERE t.project = j.project AND t.state = 'pending')"
                " AND NOT EXISTS (SELECT 1 FROM import_lease l WHERE l.project = j.project AND l.until >= ?)"
                " ORDER BY j.started", (stamp, stamp)).fetchall()
        return [r[0] for r in rows]

    def hold(self, project: int, owner: str, seconds: float) -> bool:
        stamp = now()
        with self.db.connect() as conn:
            before = conn.total_changes
            conn.execute("INSERT INTO import_lease VALUES (?, ?, ?) ON CONFLICT (project) DO UPDATE SET"
                         " owner = excluded.owner, until = excluded.until"
                         " WHERE import_lease.until < ? OR import_lease.owner = excluded.owner",
                         (project, owner, stamp + seconds, stamp))
            return conn.total_changes > before

    def let_go(self, project: int, owner: str) -> None:
        with self.db.connect() as conn:
            conn.execute("DELETE FROM import_lease WHERE project = ? AND owner = ?", (project, owner))

    def holders(self) -> dict[int, str]:
        with self.db.connect() as conn:
            rows = conn.execute("SELECT project, owner FROM import_lease WHERE until >= ?", (now(),)).fetchall()
        return dict(rows)

    def wait(self, project: int, next_try: float, note: str, until: float | None = None) -> None:
        with self.db.connect() as conn:
            conn.execute("UPDATE import_job SET next_try = ?, note = ?, waiting_until = ?, updated = ?"
                         " WHERE project = ? AND finished IS NULL", (next_try, note, until, now(), project))

    def close_if_done(self, project: int) -> bool:
        stamp = now()
        with self.db.transaction() as conn:
            left = conn.execute("SELECT 1 FROM import_task WHERE project = ? AND state = 'pending' LIMIT 1",
                                (project,)).fetchone()
            if left is None:
                conn.execute("UPDATE import_job SET finished = ?, updated = ?, waiting_until = NULL, note = ''"
                             " WHERE project = ? AND finished IS NULL", (stamp, stamp, project))
        return left is None

    def jobs(self, limit: int = SHOWN_JOBS) -> list[ImportJob]:
        with self.db.connect() as conn:
            rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM import_job ORDER BY finished IS NOT NULL,"
                                " CASE WHEN finished IS NULL THEN started ELSE -finished END LIMIT ?",
                                (limit,)).fetchall()
            jobs = [ImportJob(*row) for row in rows]
            for job in jobs:
                job.errors = Counter(dict(conn.execute(
                    "SELECT message, count FROM import_error WHERE job = ?", (job.id,)).fetchall()))
        return jobs

    def remember(self, project: int, extra_params: str) -> None:
        with self.db.connect() as conn:
            conn.execute("INSERT INTO import_project VALUES (?, ?, ?) ON CONFLICT (project) DO UPDATE SET"
                         " extra_params = excluded.extra_params, updated = excluded.updated",
                         (project, extra_params, now()))

    def extra_params(self, project: int) -> str | None:
        with self.db.connect() as conn:
            row = conn.execute("SELECT extra_params FROM import_project WHERE project = ?", (project,)).fetchone()
        return row[0] if row else None
