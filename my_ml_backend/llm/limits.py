"""Limits shared by every process that calls one endpoint with one key (when `REDIS_URL` is set).

`pacing.AdaptiveLimiter` paces the threads of one process. Several gunicorn workers
and replicas each have their own, so with 3 replicas x 2 workers and
`LLM_CONCURRENCY=2` the endpoint would see 12 requests at once. `SharedLimiter`
keeps the same contract (`acquire`/`release`, AIMD after repeated 429s, a pause
after `Retry-After`) but holds the slots and the AIMD state in Redis, keyed by a
digest of the endpoint URL and API key, so every process that shares them is one
client.

Slots are a Redis sorted set of leases (member: a random token, score: when the lease
ends). A process renews the leases of its requests in flight every third of
`LLM_SLOT_LEASE`; a process killed with `kill -9` stops renewing, and its slots are
free again within one lease. Acquire, release and the AIMD update are Lua scripts,
so each is atomic on the server and a single round trip, and all clocks are Redis'.

Our own Lua rather than a Redis semaphore library: ours must expire each lease on its
own (a killed holder) and lower its capacity (AIMD); `docs/decisions.md` says which
libraries were weighed.

When Redis cannot be reached the limiter falls back to the per-process behaviour for
`RETRY_REDIS` seconds (warning once a minute): a Redis outage loses no task.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from typing import Any

from ..settings import Settings, reveal
from ..storage import redis_db
from ..storage.leases import Renewer
from .hooks import ConcurrencyLowered, Hooks
from .pacing import AdaptiveLimiter

logger = logging.getLogger(__name__)

PREFIX = "llm-preannotation:limits:"
POLL = 0.025  # seconds between two looks at a full semaphore (with jitter)
RETRY_REDIS = 30.0  # seconds without trying Redis after it failed (each try may cost a connect timeout)
STATE_TTL = 3600  # seconds: a lowered limit nobody uses any more is forgotten after an hour

# KEYS: slots, state. ARGV: token, maximum, lease_ms. Returns {granted, limit, wait_ms, now_ms}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local maximum = tonumber(ARGV[2])
local limit = math.min(tonumber(redis.call('HGET', KEYS[2], 'limit') or maximum), maximum)
local resume = tonumber(redis.call('HGET', KEYS[2], 'resume_at') or 0)
if resume > now then return {0, limit, resume - now, now} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
  return {1, limit, 0, now}
end
return {0, limit, 0, now}
"""

# KEYS: slots. ARGV: lease_ms, tokens... Extends the leases still held.
_RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
"""

# The AIMD step of `AdaptiveLimiter.release`, on the shared state.
# KEYS: slots, state. ARGV: token, outcome (0 success, 1 throttled, 2 other failure),
# started_ms (server time of the acquire), maximum, pause_ms, state_ttl. Returns {limit, cut}.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local outcome, started, maximum = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[2], 'limit', 'successes', 'refusals', 'last_cut', 'resume_at')
local limit = math.min(tonumber(s[1] or maximum), maximum)
local successes, refusals = tonumber(s[2] or 0), tonumber(s[3] or 0)
local last_cut, resume = tonumber(s[4] or 0), tonumber(s[5] or 0)
local cut = 0
if outcome == 1 and started >= last_cut then
  successes = 0
  refusals = refusals + 1
  if refusals >= math.max(2, math.ceil(limit / 2)) then
    refusals = 0
    last_cut = now
    if tonumber(ARGV[5]) > 0 then resume = math.max(resume, now + tonumber(ARGV[5])) end
    if limit > 1 then limit = math.floor(limit / 2); cut = 1 end
  end
elseif outcome == 0 then
  refusals = 0
end
if outcome == 0 and limit < maximum then
  successes = successes + 1
  if successes >= limit then successes = 0; limit = limit + 1 end
end
redis.call('HSET', KEYS[2], 'limit', limit, 'successes', successes, 'refusals', refusals,
  'last_cut', last_cut, 'resume_at', resume)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
return {limit, cut}
"""


def limits_key(base_url: str, api_key: str | None) -> str:
    """Redis key prefix for one endpoint and key; a digest, so the key never appears in Redis."""
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key or ''}".encode()).hexdigest()[:20]
    return PREFIX + digest


class SharedLimiter(AdaptiveLimiter):
    """`AdaptiveLimiter` whose slots, limit and pause live in Redis, shared by every process.

    The in-process part still bounds this process's threads (never more than the
    maximum waiting on Redis); Redis decides who may send.
    """

    def __init__(
        self, maximum: int, redis: Any, key: str, lease: float = 15.0, name: str = "", hooks: Hooks | None = None
    ) -> None:
        super().__init__(maximum, name=name, hooks=hooks)
        self.redis = redis
        self.key = key
        self.lease_ms = max(1000, int(lease * 1000))
        self._slots, self._state = f"{key}:slots", f"{key}:state"
        self._acquire_script = redis.register_script(_ACQUIRE)
        self._release_script = redis.register_script(_RELEASE)
        self._renew_script = redis.register_script(_RENEW)
        self._held: dict[str, int] = {}  # token -> server time (ms) of its acquire
        self._held_lock = threading.Lock()
        self._thread = threading.local()  # the tokens of this thread's requests, newest last
        self._shared_limit = self.maximum
        self._last_warning = 0.0
        self._redis_down_until = 0.0
        self._renewer: Renewer | None = None

    @property
    def limit(self) -> int:
        """The shared limit as last seen (every process with the same endpoint and key sees the same)."""
        return self._shared_limit

    def acquire(self, deadline: float | None = None) -> bool:
        if not super().acquire(deadline):
            return False
        token = uuid.uuid4().hex
        while True:
            if time.monotonic() < self._redis_down_until:  # known down: pace this process alone for now
                self._tokens().append("")
                return True
            try:
                granted, limit, wait_ms, now_ms = self._acquire_script(
                    keys=[self._slots, self._state], args=[token, self.maximum, self.lease_ms]
                )
            except Exception as exc:  # noqa: BLE001 - Redis down: pace this process alone
                self._redis_failed(exc)
                self._tokens().append("")
                return True
            self._shared_limit = int(limit)
            if granted:
                with self._held_lock:
                    self._held[token] = int(now_ms)
                self._tokens().append(token)
                self._start_renewer()
                return True
            now = time.monotonic()
            pause = wait_ms / 1000.0 if wait_ms else POLL * (0.5 + random.random())
            if deadline is not None and now + min(pause, POLL) >= deadline:
                super().release(now, success=False)  # gives the local slot back, learns nothing
                return False
            time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - now)))

    def release(self, started: float, *, success: bool, throttled: bool = False, pause: float | None = None) -> None:
        tokens = self._tokens()
        token = tokens.pop() if tokens else ""
        if not token:  # acquired while Redis was down: the local limiter learns instead
            super().release(started, success=success, throttled=throttled, pause=pause)
            return
        with self._held_lock:
            started_ms = self._held.pop(token, 0)
        outcome = 0 if success else (1 if throttled else 2)
        try:
            limit, cut = self._release_script(
                keys=[self._slots, self._state],
                args=[token, outcome, started_ms, self.maximum, int((pause or 0) * 1000), STATE_TTL],
            )
        except Exception as exc:  # noqa: BLE001 - the lease frees the slot anyway
            self._redis_failed(exc)
        else:
            before, self._shared_limit = self._shared_limit, int(limit)
            if cut:
                if self.hooks is not None:
                    self.hooks.emit(ConcurrencyLowered(self.name, before, self._shared_limit, shared=True))
                logger.info(
                    "端点持续限流，所有进程共享的并发降为 %d (endpoint keeps throttling: shared concurrency %d -> %d)",
                    self._shared_limit, before, self._shared_limit,
                )
        super().release(started, success=False)  # local slot back; the shared state did the learning

    def _tokens(self) -> list[str]:
        tokens = getattr(self._thread, "tokens", None)
        if tokens is None:
            tokens = self._thread.tokens = []
        return tokens

    def _start_renewer(self) -> None:
        if self._renewer is None:
            with self._held_lock:
                if self._renewer is None:
                    self._renewer = Renewer(self.lease_ms / 3000.0, self._renew, name=f"lease-renewer-{self.name}")

    def _renew(self) -> None:
        with self._held_lock:
            tokens = list(self._held)
        if tokens:
            self._renew_script(keys=[self._slots], args=[self.lease_ms, *tokens])

    def _redis_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._redis_down_until = now + RETRY_REDIS
        if now - self._last_warning > 60:
            self._last_warning = now
            logger.warning(
                "Redis 不可用，并发限制仅在本进程内生效 (Redis unreachable: concurrency limited per process): %s: %s",
                type(exc).__name__, exc,
            )


def open_limiter(settings: Settings, hooks: Hooks | None = None) -> AdaptiveLimiter:
    """A limiter shared through Redis when `REDIS_URL` is set, else one for this process; it reports to `hooks`."""
    if not settings.redis_url:
        return AdaptiveLimiter(settings.concurrency, name=settings.model, hooks=hooks)
    try:
        redis = redis_db.connect(settings.redis_url)
    except Exception as exc:  # noqa: BLE001 - e.g. the redis package missing: stay per process
        logger.warning("无法连接 Redis，并发限制仅在本进程内生效 (cannot use Redis for limits): %s", exc)
        return AdaptiveLimiter(settings.concurrency, name=settings.model, hooks=hooks)
    key = limits_key(settings.base_url, reveal(settings.api_key))
    logger.info("并发限制 %d 由 %s 共享 (concurrency limit shared through Redis)",
                settings.concurrency, redis_db.describe(settings.redis_url))
    return SharedLimiter(settings.concurrency, redis, key, lease=settings.slot_lease, name=settings.model, hooks=hooks)
