"""Where the quota ledger keeps what it learnt: SQLite, Redis, or this process's memory.

- `SQLiteLedger`: one file in `DATA_DIR`, shared by the processes of one machine;
- `RedisLedger` (`REDIS_URL`): shared by replicas on several machines;
- `MemoryLedger`: one process only (clients built without a data store, or a store that cannot be opened).

Each merges an observation the same way: `remaining` only goes down within a day, and the
first reason a scope is out sticks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from ..storage import redis_db
from ..storage.sqlite_db import SharedSQLite

SQLITE_FILE = "quota.sqlite3"
REDIS_PREFIX = "llm-preannotation:quota:"
KEEP_DAYS = 7  # SQLite keeps the quota of the last week's days
TTL_SECONDS = 3 * 86400  # Redis: a day's entries outlive the day a little, then go


# The records a ledger holds; defined beside the stores that return them, used through `llm.quota`.
@dataclass(frozen=True)
class Quota:
    """Today's quota of one scope (a model, or `ACCOUNT`) as last reported."""

    scope: str
    limit: int | None = None
    remaining: int | None = None
    out: str = ""  # why no call may be spent on it today: "quota" or "retired"; "" while usable

    @property
    def exhausted(self) -> bool:
        return bool(self.out) or (self.remaining is not None and self.remaining <= 0)


@dataclass(frozen=True)
class Cost:
    """What answers of one model cost so far (all days): the dry run's calibration."""

    calls: int = 0
    prompt_chars: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    tasks: int = 0  # tasks answered by these calls (several per call when packed)


class LedgerStore(Protocol):
    description: str

    def update(self, account: str, day: str, scope: str, limit: int | None, remaining: int | None, out: str) -> None:
        """Merge one observation: `remaining` only goes down within a day; `out` sticks."""

    def read(self, account: str, day: str) -> dict[str, Quota]: ...

    def add_cost(self, account: str, model: str, cost: Cost) -> None: ...

    def costs(self, account: str) -> dict[str, Cost]: ...

    def clear(self, account: str) -> None: ...


class SQLiteLedger:
    """The ledger in one SQLite file in `DATA_DIR`, shared by the processes of one machine."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS quota (account TEXT, day TEXT, scope TEXT, lim INTEGER, remaining INTEGER,"
        " out TEXT NOT NULL DEFAULT '', PRIMARY KEY (account, day, scope))",
        "CREATE TABLE IF NOT EXISTS cost (account TEXT, model TEXT, calls INTEGER, prompt_chars INTEGER,"
        " prompt_tokens INTEGER, completion_tokens INTEGER, seconds REAL, tasks INTEGER,"
        " PRIMARY KEY (account, model))",
    )

    def __init__(self, path: Path) -> None:
        self.description = f"SQLite {path}"
        self.db = SharedSQLite(path, self.SCHEMA)

    def update(self, account: str, day: str, scope: str, limit: int | None, remaining: int | None, out: str) -> None:
        with self.db.connect() as conn:
            conn.execute(
                "INSERT INTO quota (account, day, scope, lim, remaining, out) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (account, day, scope) DO UPDATE SET"
                " lim = COALESCE(excluded.lim, lim),"
                " remaining = CASE WHEN remaining IS NULL THEN excluded.remaining"
                "   WHEN excluded.remaining IS NULL THEN remaining ELSE MIN(remaining, excluded.remaining) END,"
                " out = CASE WHEN out != '' THEN out ELSE excluded.out END",
                (account, day, scope, limit, remaining, out),
            )
            conn.execute("DELETE FROM quota WHERE account = ? AND day < ?", (account, _days_before(day, KEEP_DAYS)))

    def read(self, account: str, day: str) -> dict[str, Quota]:
        with self.db.connect() as conn:
            rows = conn.execute(
                "SELECT scope, lim, remaining, out FROM quota WHERE account = ? AND day = ?", (account, day)
            ).fetchall()
        return {r[0]: Quota(r[0], r[1], r[2], r[3] or "") for r in rows}

    def add_cost(self, account: str, model: str, cost: Cost) -> None:
        with self.db.connect() as conn:
            conn.execute(
                "INSERT INTO cost VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account, model) DO UPDATE SET"
                " calls = calls + excluded.calls, prompt_chars = prompt_chars + excluded.prompt_chars,"
                " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens,"
                " seconds = seconds + excluded.seconds, tasks = tasks + excluded.tasks",
                (account, model, cost.calls, cost.prompt_chars, cost.prompt_tokens, cost.completion_tokens,
                 cost.seconds, cost.tasks),
            )

    def costs(self, account: str) -> dict[str, Cost]:
        with self.db.connect() as conn:
            rows = conn.execute(
                "SELECT model, calls, prompt_chars, prompt_tokens, completion_tokens, seconds, tasks FROM cost"
                " WHERE account = ?", (account,)
            ).fetchall()
        return {r[0]: Cost(*r[1:]) for r in rows}

    def clear(self, account: str) -> None:
        with self.db.connect() as conn:
            conn.execute("DELETE FROM quota WHERE account = ?", (account,))


# Lua: merge one observation atomically (remaining only decreases, `out` sticks), like the SQLite upsert.
_MERGE = """
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'lim', ARGV[1]) end
if ARGV[2] ~= '' then
  local cur = redis.call('HGET', KEYS[1], 'remaining')
  if (not cur) or tonumber(ARGV[2]) < tonumber(cur) then redis.call('HSET', KEYS[1], 'remaining', ARGV[2]) end
end
if ARGV[3] ~= '' and not redis.call('HGET', KEYS[1], 'out') then redis.call('HSET', KEYS[1], 'out', ARGV[3]) end
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""


class RedisLedger:
    """The ledger in Redis (`REDIS_URL`): shared by replicas on several machines."""

    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        self.description = redis_db.describe(url)
        self.redis = redis_db.connect(url)
        self.prefix = prefix
        self._merge = self.redis.register_script(_MERGE)

    def _day_keys(self, account: str, day: str) -> str:
        return f"{self.prefix}{account}:{day}"

    def update(self, account: str, day: str, scope: str, limit: int | None, remaining: int | None, out: str) -> None:
        base = self._day_keys(account, day)
        args = ["" if limit is None else limit, "" if remaining is None else remaining, out, TTL_SECONDS, scope]
        self._merge(keys=[f"{base}:{scope}", f"{base}:scopes"], args=args)

    def read(self, account: str, day: str) -> dict[str, Quota]:
        base = self._day_keys(account, day)
        scopes = sorted(s.decode() for s in self.redis.smembers(f"{base}:scopes"))
        pipe = self.redis.pipeline()
        for scope in scopes:
            pipe.hgetall(f"{base}:{scope}")
        out = {}
        for scope, raw in zip(scopes, pipe.execute(), strict=True):
            stored = {k.decode(): v.decode() for k, v in raw.items()}
            out[scope] = Quota(scope, _int(stored.get("lim")), _int(stored.get("remaining")), stored.get("out", ""))
        return out

    def add_cost(self, account: str, model: str, cost: Cost) -> None:
        key = f"{self.prefix}{account}:cost:{model}"
        pipe = self.redis.pipeline()
        for name in ("calls", "prompt_chars", "prompt_tokens", "completion_tokens", "tasks"):
            pipe.hincrby(key, name, getattr(cost, name))
        pipe.hincrbyfloat(key, "seconds", cost.seconds)
        pipe.sadd(f"{self.prefix}{account}:cost-models", model)
        pipe.execute()

    def costs(self, account: str) -> dict[str, Cost]:
        models = sorted(m.decode() for m in self.redis.smembers(f"{self.prefix}{account}:cost-models"))
        out = {}
        for model in models:
            stored = self.redis.hgetall(f"{self.prefix}{account}:cost:{model}")
            raw = {k.decode(): v.decode() for k, v in stored.items()}
            out[model] = Cost(int(raw.get("calls", 0)), int(raw.get("prompt_chars", 0)),
                              int(raw.get("prompt_tokens", 0)), int(raw.get("completion_tokens", 0)),
                              float(raw.get("seconds", 0)), int(raw.get("tasks", 0)))
        return out

    def clear(self, account: str) -> None:
        for key in self.redis.scan_iter(f"{self.prefix}{account}:20*"):  # the days' keys (YYYY-MM-DD), not the costs
            self.redis.delete(key)


class MemoryLedger:
    """A per-process ledger for clients built without a data store (tests, one-off tools)."""

    def __init__(self) -> None:
        self.description = "memory (this process only)"
        self._quota: dict[tuple[str, str, str], Quota] = {}
        self._costs: dict[tuple[str, str], Cost] = {}
        self._lock = threading.Lock()

    def update(self, account: str, day: str, scope: str, limit: int | None, remaining: int | None, out: str) -> None:
        with self._lock:
            old = self._quota.get((account, day, scope), Quota(scope))
            known = [r for r in (old.remaining, remaining) if r is not None]
            rem = min(known) if known else None
            self._quota[(account, day, scope)] = Quota(scope, limit if limit is not None else old.limit, rem,
                                                       old.out or out)

    def read(self, account: str, day: str) -> dict[str, Quota]:
        with self._lock:
            return {s: q for (a, d, s), q in self._quota.items() if a == account and d == day}

    def add_cost(self, account: str, model: str, cost: Cost) -> None:
        with self._lock:
            old = self._costs.get((account, model), Cost())
            self._costs[(account, model)] = Cost(*(getattr(old, f.name) + getattr(cost, f.name) for f in fields(Cost)))

    def costs(self, account: str) -> dict[str, Cost]:
        with self._lock:
            return {m: c for (a, m), c in self._costs.items() if a == account}

    def clear(self, account: str) -> None:
        with self._lock:
            self._quota = {k: v for k, v in self._quota.items() if k[0] != account}


def _int(value: str | None) -> int | None:
    """A number the ledger stored itself, None when none was."""
    return None if value is None else int(value)


def _days_before(day: str, days: int) -> str:
    return (datetime.fromisoformat(day) - timedelta(days=days)).date().isoformat()
