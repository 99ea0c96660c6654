"""Response cache: the same request to the same model is paid for once.

Label Studio asks again for tasks it already asked about: a second "Retrieve
predictions" after a batch hit the deadline, a task re-opened in the labeling view,
a restarted backend. The key is a digest of everything that decides the answer —
endpoint, model and the full request body (messages, temperature, max_tokens, top_p,
response_format, logprobs, extra flags) — so a change of model, prompt or parameters
is a miss and never serves a stale answer. Only valid, successful answers are stored,
in one of `cache_stores`.

A store that fails (disk full, Redis down) costs a warning and a miss, never a task.
Identical requests in flight at once are sent once (`claim`): a second retrieve
arriving while the first one's late calls are still running waits for them instead
of paying again. Within a process through an event per key; with a store shared by
processes (Redis), across every process and replica too, through a leased claim.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..settings import Settings
from ..storage.fallback import READ, WRITE, StoreFailures, open_once
from ..telemetry.metrics import CACHE_ERRORS, METRICS
from .cache_stores import SQLITE_FILE, CacheStore, RedisStore, SharedClaims, SQLiteStore

logger = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the key payload or the stored entry changes shape
CLAIM_POLL = 0.1  # seconds between two looks for the answer another process is computing
_FAILURES = (("响应缓存", "response cache"), ("按未命中处理", "treated as a miss"))
_OPENING = (("响应缓存", "response cache"), ("继续但不缓存", "running without"))


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


class ResponseCache:
    """Cached answers by key over any `CacheStore`, plus a per-process in-flight registry."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._inflight: dict[str, threading.Event] = {}
        self._shared: dict[str, str] = {}  # key -> token of the store-wide claim this process holds
        self._lock = threading.Lock()
        self.failures = StoreFailures(*_FAILURES, count=lambda: METRICS.inc(CACHE_ERRORS))

    @property
    def description(self) -> str:
        return self.store.description

    def get(self, key: str) -> CachedAnswer | None:
        raw = self.failures.guard(READ, lambda: self.store.get(key))
        return CachedAnswer.loads(raw) if raw is not None else None

    def put(self, key: str, answer: CachedAnswer) -> None:
        self.failures.guard(WRITE, lambda: self.store.set(key, answer.dumps()))

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
        shared = self.store
        if not isinstance(shared, SharedClaims):
            return True
        while True:
            try:
                token = shared.try_claim(key)
            except Exception as exc:  # noqa: BLE001 - without the claim we may pay twice, never lose a task
                self.failures.report(READ, exc)
                return True
            if token is not None:
                answer = self.get(key)  # stored by the previous holder just before it let go?
                if answer is None:
                    with self._lock:
                        self._shared[key] = token
                    return True
                shared.unclaim(key, token)
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
        if token is not None:  # the lease ends the claim anyway if this fails
            self.failures.guard(WRITE, lambda: cast(SharedClaims, self.store).unclaim(key, token))
        if event is not None:
            event.set()


def open_cache(settings: Settings) -> ResponseCache | None:
    """The cache `settings` ask for (None when `LLM_CACHE=off` or the store cannot be opened).

    One cache per store location in a process, so its in-flight registry covers every client.
    """
    if not settings.cache_enabled:
        logger.info("响应缓存已关闭 (response cache off: LLM_CACHE=off)")
        return None
    ttl = settings.cache_ttl or None
    if settings.redis_url:
        url = settings.redis_url
        return open_once(("response cache", url, ttl), lambda: ResponseCache(RedisStore(url, ttl)), lambda: None,
                         *_OPENING)
    path = Path(settings.data_dir) / SQLITE_FILE
    max_entries = settings.cache_max_entries or None
    return open_once(("response cache", str(path), ttl, max_entries),
                     lambda: ResponseCache(SQLiteStore(path, ttl, max_entries)), lambda: None, *_OPENING)


def _token(text: Any, logprob: Any, top: Any = ()) -> Token:
    """A cached token; entries written before alternatives were kept have none."""
    return str(text), float(logprob), tuple((str(a), float(lp)) for a, lp in top)
