"""Where the response cache keeps its answers: SQLite in `DATA_DIR`, or Redis when `REDIS_URL` is set.

- `SQLiteStore`, the default: one file, WAL journal and a busy timeout, so several gunicorn
  workers (processes) and their threads share it safely; pruned by age and size;
- `RedisStore`: the shared store of several replicas, which also lets one process claim a
  request in flight for everyone (`try_claim`), so replicas never pay twice for it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..storage import redis_db
from ..storage.leases import KeyLeases
from ..storage.sqlite_db import SharedSQLite

SQLITE_FILE = "llm_cache.sqlite3"
REDIS_PREFIX = "llm-preannotation:response:"
CLAIM_PREFIX = "llm-preannotation:inflight:"
CLAIM_LEASE = 15.0  # seconds a killed process's claim keeps others waiting (renewed every third while alive)
PRUNE_EVERY = 500  # SQLite writes between two size/TTL prunes (per process)


class CacheStore(Protocol):
    """A key-value store for serialized answers; implementations must be thread-safe."""

    description: str

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...


@runtime_checkable
class SharedClaims(Protocol):
    """A store shared by processes, where one of them claims a key while it computes it."""

    def try_claim(self, key: str) -> str | None: ...

    def unclaim(self, key: str, token: str) -> None: ...


class SQLiteStore:
    """Answers in one SQLite file shared by every process and thread (see `storage.sqlite_db`)."""

    def __init__(self, path: Path, ttl: float | None = None, max_entries: int | None = None) -> None:
        self.path = Path(path)
        self.ttl = ttl or None
        self.max_entries = max_entries or None
        self.description = f"SQLite {self.path}"
        self._writes = 0
        self._db = SharedSQLite(
            self.path,
            [
                "CREATE TABLE IF NOT EXISTS responses"
                " (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)",
                "CREATE INDEX IF NOT EXISTS responses_created ON responses (created)",
            ],
        )

    def get(self, key: str) -> str | None:
        with self._db.connect() as conn:
            row = conn.execute("SELECT value, created FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None or (self.ttl and row[1] < time.time() - self.ttl):
            return None
        return row[0]

    def set(self, key: str, value: str) -> None:
        with self._db.connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)", (key, value, time.time())
            )
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                self._prune(conn)

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Drop expired entries, then the oldest beyond `max_entries`."""
        if self.ttl:
            conn.execute("DELETE FROM responses WHERE created < ?", (time.time() - self.ttl,))
        if self.max_entries:
            (count,) = conn.execute("SELECT COUNT(*) FROM responses").fetchone()
            if count > self.max_entries:
                conn.execute(
                    "DELETE FROM responses WHERE key IN (SELECT key FROM responses ORDER BY created LIMIT ?)",
                    (count - self.max_entries,),
                )

    def count(self) -> int:
        with self._db.connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class RedisStore:
    """Entries as Redis strings with an expiry; one store for several replicas.

    Size is left to Redis itself (`maxmemory` with an `allkeys-lru` or `volatile-lru`
    policy): every entry has a TTL, so either policy can evict it.
    """

    def __init__(self, url: str, ttl: float | None = None, prefix: str = REDIS_PREFIX) -> None:
        self.ttl = ttl or None
        self.prefix = prefix
        self.description = redis_db.describe(url)
        self._redis: Any = redis_db.connect(url)
        self._claims = KeyLeases(self._redis, CLAIM_PREFIX, CLAIM_LEASE, name="inflight-claims")

    def get(self, key: str) -> str | None:
        value = self._redis.get(self.prefix + key)
        return value.decode("utf-8") if isinstance(value, bytes) else value

    def set(self, key: str, value: str) -> None:
        self._redis.set(self.prefix + key, value, ex=int(self.ttl) if self.ttl else None)

    def try_claim(self, key: str) -> str | None:
        """A token when this process now computes `key` for everyone, None when another one does."""
        return self._claims.take(key)

    def unclaim(self, key: str, token: str) -> None:
        self._claims.give_back(key, token)
