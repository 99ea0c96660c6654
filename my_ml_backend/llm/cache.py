"""Response cache: the same request to the same model is paid for once.

Label Studio asks again for tasks it already asked about: a second "Retrieve
predictions" after a batch hit the deadline, a task re-opened in the labeling view,
a restarted backend. The key is a digest of everything that decides the answer —
endpoint, model and the full request body (messages, temperature, max_tokens, top_p,
response_format, logprobs, extra flags) — so a change of model, prompt or parameters
is a miss and never serves a stale answer. Only valid, successful answers are stored.

Stores (both behind `CacheStore`):
- `SQLiteStore`, the default: one file in `DATA_DIR`, WAL journal and a busy timeout,
  so several gunicorn workers (processes) and their threads share it safely;
- `RedisStore` when `REDIS_URL` is set: the shared store for several replicas.

A store that fails (disk full, Redis down) costs a warning and a miss, never a task.
Identical requests in flight at once are sent once (`claim`): a second retrieve
arriving while the first one's late calls are still running waits for them instead
of paying again. Within a process through an event per key; with Redis, across every
process and replica too, through a claim key with a lease (renewed while the request
runs, so a killed process blocks nobody for longer than the lease).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from ..settings import Settings
from ..storage import redis_db
from ..storage.sqlite_db import SharedSQLite
from ..telemetry.metrics import CACHE_ERRORS, METRICS
from .limits import Renewer

logger = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the key payload or the stored entry changes shape
SQLITE_FILE = "llm_cache.sqlite3"
REDIS_PREFIX = "llm-preannotation:response:"
CLAIM_PREFIX = "llm-preannotation:inflight:"
CLAIM_LEASE = 15.0  # seconds a killed process's claim keeps others waiting (renewed every third while alive)
CLAIM_POLL = 0.1  # seconds between two looks for the answer another process is computing
_UNCLAIM = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW_CLAIM = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
PRUNE_EVERY = 500  # SQLite writes between two size/TTL prunes (per process)


def cache_key(base_url: str, params: dict[str, Any]) -> str:
    """Digest of the endpoint and the request body: equal exactly when the request is."""
    payload = json.dumps(
        {"v": KEY_VERSION, "base_url": base_url.rstrip("/"), "request": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# One answer token: its text, its logprob, and the top alternatives at its position.
Token = tuple[str, float, tuple[tuple[str, float], ...]]


@dataclass(frozen=True)
class CachedAnswer:
    """What is kept of a reply: enough to rebuild the prediction and its scores."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: tuple[Token, ...] = ()
    mode: str = "text"

    def dumps(self) -> str:
        return json.dumps(
            {
                "text": self.text,
                "usage": [self.prompt_tokens, self.completion_tokens],
                "tokens": [[t[0], t[1], [list(a) for a in t[2]]] for t in self.tokens],
                "mode": self.mode,
            },
            ensure_ascii=False,
        )

    @classmethod
    def loads(cls, raw: str | bytes) -> CachedAnswer | None:
        """None for anything that is not an entry we wrote (treated as a miss)."""
        try:
            data = json.loads(raw)
            text = data["text"]
            prompt, completion = data.get("usage") or (0, 0)
            tokens = tuple(_token(*t) for t in data.get("tokens") or ())
            if not isinstance(text, str) or not text.strip():
                return None
            return cls(text, int(prompt), int(completion), tokens, str(data.get("mode") or "text"))
        except (ValueError, TypeError, KeyError):
            return None


class CacheStore(Protocol):
    """A key-value store for serialized answers; implementations must be thread-safe."""

    description: str

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...


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
        self._redis = redis_db.connect(url)
        self._claims: dict[str, tuple[str, float]] = {}  # in-flight claims this process holds: key -> token
        self._claims_lock = threading.Lock()
        self._renewer: Renewer | None = None

    def get(self, key: str) -> str | None:
        value = self._redis.get(self.prefix + key)
        return value.decode("utf-8") if isinstance(value, bytes) else value

    def set(self, key: str, value: str) -> None:
        self._redis.set(self.prefix + key, value, ex=int(self.ttl) if self.ttl else None)

    def try_claim(self, key: str, lease: float = CLAIM_LEASE) -> str | None:
        """A token when this process now computes `key` for everyone, None when another one does."""
        token = uuid.uuid4().hex
        if not self._redis.set(CLAIM_PREFIX + key, token, nx=True, px=int(lease * 1000)):
            return None
        with self._claims_lock:
            self._claims[key] = (token, lease)
            if self._renewer is None:
                self._renewer = Renewer(lease / 3, self._renew_claims, name="inflight-claims")
        return token

    def unclaim(self, key: str, token: str) -> None:
        with self._claims_lock:
            self._claims.pop(key, None)
        self._redis.eval(_UNCLAIM, 1, CLAIM_PREFIX + key, token)

    def _renew_claims(self) -> None:
        with self._claims_lock:
            claims = list(self._claims.items())
        for key, (token, lease) in claims:
            self._redis.eval(_RENEW_CLAIM, 1, CLAIM_PREFIX + key, token, int(lease * 1000))


class ResponseCache:
    """Cached answers by key over any `CacheStore`, plus a per-process in-flight registry."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._inflight: dict[str, threading.Event] = {}
        self._shared: dict[str, str] = {}  # key -> token of the store-wide claim this process holds
        self._lock = threading.Lock()
        self._last_warning = 0.0

    def get(self, key: str) -> CachedAnswer | None:
        try:
            raw = self.store.get(key)
        except Exception as exc:  # noqa: BLE001 - a broken store must cost a miss, not a task
            self._store_failed("read", exc)
            return None
        return CachedAnswer.loads(raw) if raw is not None else None

    def put(self, key: str, answer: CachedAnswer) -> None:
        try:
            self.store.set(key, answer.dumps())
        except Exception as exc:  # noqa: BLE001
            self._store_failed("write", exc)

    def claim(self, key: str, deadline: float | None = None) -> CachedAnswer | bool:
        """The cached answer, or True: the caller must compute it and call `release(key)`.

        When another thread of this process, or another process sharing the store, is
        already computing the same key, wait for it (never past `deadline`) and return
        what it stored; False when the deadline came first or it stored nothing (the
        caller may look again and claim).
        """
        answer = self.get(key)
        if answer is not None:
            return answer
        with self._lock:
            event = self._inflight.get(key)
            if event is None:
                self._inflight[key] = threading.Event()
        if event is None:
            shared = self._claim_shared(key, deadline)
            if shared is not True:
                self.release(key)  # our threads waiting on this key look again
            return shared
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        event.wait(timeout)
        return self.get(key) or False

    def _claim_shared(self, key: str, deadline: float | None) -> CachedAnswer | bool:
        """The store-wide part of `claim`, for stores shared by processes (Redis)."""
        try_claim = getattr(self.store, "try_claim", None)
        if try_claim is None:
            return True
        while True:
            try:
                token = try_claim(key)
            except Exception as exc:  # noqa: BLE001 - without the claim we may pay twice, never lose a task
                self._store_failed("read", exc)
                return True
            if token is not None:
                answer = self.get(key)  # stored by the previous holder just before it let go?
                if answer is None:
                    with self._lock:
                        self._shared[key] = token
                    return True
                self.store.unclaim(key, token)  # type: ignore[attr-defined]
                return answer
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            time.sleep(CLAIM_POLL if deadline is None else min(CLAIM_POLL, deadline - now))
            answer = self.get(key)
            if answer is not None:
                return answer

    def release(self, key: str) -> None:
        with self._lock:
            event = self._inflight.pop(key, None)
            token = self._shared.pop(key, None)
        if token is not None:
            try:
                self.store.unclaim(key, token)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - the lease ends the claim anyway
                self._store_failed("write", exc)
        if event is not None:
            event.set()

    def _store_failed(self, action: str, exc: BaseException) -> None:
        METRICS.inc(CACHE_ERRORS)
        now = time.monotonic()
        if now - self._last_warning > 60:  # once a minute, not once per task
            self._last_warning = now
            logger.warning(
                "响应缓存%s失败，按未命中处理 (response cache %s failed, treated as a miss): %s: %s",
                "读取" if action == "read" else "写入", action, type(exc).__name__, exc,
            )


def open_cache(settings: Settings) -> ResponseCache | None:
    """The cache `settings` ask for (None when `LLM_CACHE=off` or the store cannot be opened)."""
    if not settings.cache_enabled:
        logger.info("响应缓存已关闭 (response cache off: LLM_CACHE=off)")
        return None
    ttl = settings.cache_ttl or None
    if settings.redis_url:
        return _shared_cache("redis", settings.redis_url, ttl, None)
    return _shared_cache("sqlite", str(settings.data_dir / SQLITE_FILE), ttl, settings.cache_max_entries or None)


@lru_cache(maxsize=8)
def _shared_cache(kind: str, where: str, ttl: float | None, max_entries: int | None) -> ResponseCache | None:
    """One cache per store location in a process, so its in-flight registry covers every client."""
    try:
        store: CacheStore = RedisStore(where, ttl) if kind == "redis" else SQLiteStore(Path(where), ttl, max_entries)
    except Exception as exc:  # noqa: BLE001 - predictions still work without a cache
        logger.warning("无法打开响应缓存，继续但不缓存 (cannot open the response cache, running without): %s", exc)
        return None
    logger.info("响应缓存 (response cache): %s", store.description)
    return ResponseCache(store)


def _token(text: Any, logprob: Any, top: Any = ()) -> Token:
    """A cached token; entries written before alternatives were kept have none."""
    return str(text), float(logprob), tuple((str(a), float(lp)) for a, lp in top)
