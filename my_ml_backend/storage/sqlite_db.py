"""One SQLite file shared by every process and thread of the backend.

WAL lets readers proceed during a write and a busy timeout makes concurrent writers
from other processes (gunicorn workers) wait instead of failing. Within a process one
connection is shared under a lock: SQLite serializes writes anyway, and a lookup takes
well under a millisecond next to a model call of seconds. A forked worker never reuses
its parent's connection.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class SharedSQLite:
    """A lazily (re)opened, lock-guarded connection; `schema` statements run on each open."""

    def __init__(self, path: Path, schema: Sequence[str]) -> None:
        self.path = Path(path)
        self.schema = tuple(schema)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect():  # fail now, at startup, if the file cannot be opened
            pass

    def _open(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for statement in self.schema:
                conn.execute(statement)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """The connection, held exclusively by this thread for the `with` block."""
        with self._lock:
            yield self._open()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection in one write transaction, taken at once (BEGIN IMMEDIATE): committed, or rolled back."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
