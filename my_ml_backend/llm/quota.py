"""The quota ledger: what is left of today's free-tier calls, per model and per account.

ModelScope API-Inference's free tier caps calls per account (about 2,000 a day) and
per model (100-500), and says how many are left in the `modelscope-ratelimit-*`
headers of every answer; over a cap it answers 429, and a retired model answers
404/400. None of it is documented well enough to hard-code, so the ledger learns it
from the answers and refusals and keeps it where every worker and replica sees it:
SQLite in `DATA_DIR` (processes of one machine), or Redis when `REDIS_URL` is set.
It survives restarts, and forgets everything when the quota day rolls over
(`LLM_QUOTA_RESET`, default midnight Asia/Shanghai, the service's own day).

It also keeps, per model and for all time, what answers cost (characters sent,
tokens paid, seconds): `batch_predict.py --dry-run` estimates a run from these.

A ledger that cannot be read or written (disk full, Redis down) costs a warning and
is treated as knowing nothing: calls go ahead and the endpoint itself refuses.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..settings import Settings, reveal
from ..storage import redis_db
from ..storage.sqlite_db import SharedSQLite
from .errors import ErrorKind, PredictionError

logger = logging.getLogger(__name__)

ACCOUNT = "*"  # the scope of the account-wide cap; other scopes are model ids
SQLITE_FILE = "quota.sqlite3"
REDIS_PREFIX = "llm-preannotation:quota:"
ACCOUNT_LIMIT = "modelscope-ratelimit-requests-limit"
ACCOUNT_REMAINING = "modelscope-ratelimit-requests-remaining"
MODEL_LIMIT = "modelscope-ratelimit-model-requests-limit"
MODEL_REMAINING = "modelscope-ratelimit-model-requests-remaining"

RETIRED = "retired"  # out reasons; a cap that reached 0 is "quota"
QUOTA = "quota"


# --------------------------------------------------------------------------- the quota day


class DayClock:
    """When the quota day starts: `HH:MM [Area/City]` (`LLM_QUOTA_RESET`), e.g. `00:00 Asia/Shanghai`."""

    def __init__(self, spec: str = "00:00 Asia/Shanghai") -> None:
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*(\S*)\s*", spec or "")
        if not match or int(match[1]) > 23 or int(match[2]) > 59:
            raise ValueError(f"LLM_QUOTA_RESET 格式应为 HH:MM [时区] (must be HH:MM [Area/City]), got {spec!r}")
        self.hour, self.minute = int(match[1]), int(match[2])
        self.zone_name = match[3] or "Asia/Shanghai"
        self.zone = _zone(self.zone_name)

    def day(self, now: datetime | None = None) -> str:
        """The quota day `now` belongs to, as `YYYY-MM-DD` (the date its day started)."""
        local = (now or datetime.now(UTC)).astimezone(self.zone)
        return (local - timedelta(hours=self.hour, minutes=self.minute)).date().isoformat()

    def next_reset(self, now: datetime | None = None) -> datetime:
        """The next start of a quota day, in the clock's zone."""
        local = (now or datetime.now(UTC)).astimezone(self.zone)
        reset = local.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        return reset if reset > local else (reset + timedelta(days=1)).replace(tzinfo=self.zone)

    def describe_reset(self, now: datetime | None = None) -> tuple[str, str]:
        """(`HH:MM`, `YYYY-MM-DD HH:MM Zone (HH:MM UTC)`) of the next reset, for messages."""
        reset = self.next_reset(now)
        utc = reset.astimezone(UTC)
        return reset.strftime("%H:%M"), f"{reset:%Y-%m-%d %H:%M} {self.zone_name} ({utc:%H:%M} UTC)"


def _zone(name: str) -> tzinfo:
    """The IANA zone `name` (the `tzdata` package supplies the database where the system has none)."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"LLM_QUOTA_RESET 的时区未知 (unknown time zone in LLM_QUOTA_RESET) {name!r}") from None


# --------------------------------------------------------------------------- what is known


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
            conn.execute("DELETE FROM quota WHERE account = ? AND day < ?", (account, _days_before(day, 7)))

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
TTL_SECONDS = 3 * 86400  # a day's entries outlive the day a little, then go


class RedisLedger:
    """The ledger in Redis (`REDIS_URL`): shared by replicas on several machines."""

    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
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
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            out[scope] = Quota(scope, header_int(fields.get("lim")), header_int(fields.get("remaining")),
                               fields.get("out", ""))
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
        for key in self.redis.scan_iter(f"{self.prefix}{account}:20*"):
            self.redis.delete(key)


class MemoryLedger:
    """A per-process ledger for clients built without a data store (tests, one-off tools)."""

    def __init__(self) -> None:
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
            self._costs[(account, model)] = Cost(*(getattr(old, f) + getattr(cost, f) for f in Cost.__annotations__))

    def costs(self, account: str) -> dict[str, Cost]:
        with self._lock:
            return {m: c for (a, m), c in self._costs.items() if a == account}

    def clear(self, account: str) -> None:
        with self._lock:
            self._quota = {k: v for k, v in self._quota.items() if k[0] != account}


# --------------------------------------------------------------------------- the ledger


class QuotaLedger:
    """Today's quota of one account (API key at one endpoint), learnt from answers and refusals."""

    def __init__(self, store: LedgerStore, clock: DayClock, account: str) -> None:
        self.store = store
        self.clock = clock
        self.account = account

    def _safely(self, action: str, fn: Any, default: Any = None) -> Any:
        try:
            return fn()
        except (sqlite3.Error, OSError, Exception) as exc:  # noqa: BLE001 - a broken ledger must not fail a task
            logger.warning("额度账本%s失败，视为未知 (quota ledger %s failed): %s", action, action, type(exc).__name__)
            return default

    def _today(self, sent_day: str | None) -> str | None:
        """The quota day to book an answer to: today's, or None when it was sent in a day that has ended since
        (its "remaining: 0" is yesterday's and must not close the new day)."""
        day = self.clock.day()
        return day if sent_day in (None, day) else None

    def observe(self, model: str, headers: Any, sent_day: str | None = None) -> None:
        """Record the quota headers of one answer (or refusal) from `model`, sent in quota day `sent_day`."""
        get = getattr(headers, "get", None)
        if get is None or (day := self._today(sent_day)) is None:
            return
        values = {h: header_int(get(h)) for h in (ACCOUNT_LIMIT, ACCOUNT_REMAINING, MODEL_LIMIT, MODEL_REMAINING)}
        if not any(v is not None for v in values.values()):
            return
        if values[ACCOUNT_LIMIT] is not None or values[ACCOUNT_REMAINING] is not None:
            self._safely("写入", lambda: self.store.update(
                self.account, day, ACCOUNT, values[ACCOUNT_LIMIT], values[ACCOUNT_REMAINING], ""))
        if values[MODEL_LIMIT] is not None or values[MODEL_REMAINING] is not None:
            self._safely("写入", lambda: self.store.update(
                self.account, day, model, values[MODEL_LIMIT], values[MODEL_REMAINING], ""))

    def mark_out(self, scope: str, reason: str, sent_day: str | None = None) -> None:
        """No call may be spent on `scope` (a model, or `ACCOUNT`) until the quota day ends."""
        if (day := self._today(sent_day)) is None:
            return
        self._safely("写入", lambda: self.store.update(self.account, day, scope, None, None, reason))

    def today(self) -> dict[str, Quota]:
        """Everything known about today, by scope."""
        return self._safely("读取", lambda: self.store.read(self.account, self.clock.day()), {}) or {}

    def add_cost(self, model: str, cost: Cost) -> None:
        self._safely("写入", lambda: self.store.add_cost(self.account, model, cost))

    def costs(self) -> dict[str, Cost]:
        return self._safely("读取", lambda: self.store.costs(self.account), {}) or {}

    def clear(self) -> None:
        """Forget today's refusals and counts (after a plan upgrade, or between tests)."""
        self._safely("清除", lambda: self.store.clear(self.account))


def quota_used_up(clock: DayClock, models: list[str]) -> PredictionError:
    """The error of a task that no model may answer today: said at once, without a call."""
    hhmm, full = clock.describe_reset()
    return PredictionError(
        ErrorKind.QUOTA,
        f"❌ 今日额度已用完（{', '.join(models)}），将于 {hhmm} 恢复；届时再次预测即可继续，或配置 "
        f"MODELSCOPE_FALLBACK_MODELS / 更换 API Key (daily quota used up; resets at {full})",
    )


def account_id(settings: Settings) -> str:
    """Which account a ledger entry belongs to: a digest of endpoint and key (the key never stored)."""
    raw = f"{settings.base_url.rstrip('/')}\n{reveal(settings.api_key)}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def open_ledger(settings: Settings) -> QuotaLedger:
    """The ledger of `settings`' account: Redis when `REDIS_URL` is set, else SQLite in `DATA_DIR`."""
    clock = DayClock(settings.quota_reset)
    where = settings.redis_url or str(Path(settings.data_dir) / SQLITE_FILE)
    return QuotaLedger(_store(bool(settings.redis_url), where), clock, account_id(settings))


@lru_cache(maxsize=8)
def _store(redis: bool, where: str) -> LedgerStore:
    try:
        return RedisLedger(where) if redis else SQLiteLedger(Path(where))
    except Exception as exc:  # noqa: BLE001 - no shared ledger: this process still learns in memory
        logger.warning("无法打开额度账本，仅在本进程内记录 (cannot open the quota ledger): %s", type(exc).__name__)
        return MemoryLedger()


def header_int(value: Any) -> int | None:
    """A rate-limit header's number (negative ones included), None when absent or not a number."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text.lstrip("-").isdigit() else None


def _days_before(day: str, days: int) -> str:
    return (datetime.fromisoformat(day) - timedelta(days=days)).date().isoformat()
