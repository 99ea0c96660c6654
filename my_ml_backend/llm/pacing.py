"""Pacing of requests to the LLM endpoint: how many at once, and when to try again.

`LLM_CONCURRENCY` is what the user hopes the endpoint allows; repeated 429s say it
does not (ModelScope's free tier allows about one request at a time). `AdaptiveLimiter`
is an AIMD limit shared by all batch workers of a client: when half a round of
requests in a row is refused it halves, and pauses every worker for the server's
`Retry-After` (the others would only collect the same 429); each full round of
successes adds one back. So a saturated endpoint gets fewer requests instead of the
same number of retries, and full speed returns when it recovers. A stray 429 among
successes (a shared endpoint under load) only delays its own request.

`retry_delay()` decides whether a failed request is worth repeating and after how
long. Every wait is bounded by the batch deadline: Label Studio drops a `/predict`
reply after `ML_TIMEOUT_PREDICT` seconds, so a retry that cannot finish before it is
money spent for nothing.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import openai

from ..telemetry.metrics import CONCURRENCY_DECREASES, METRICS
from .errors import ErrorKind, classify, is_quota_exhausted

logger = logging.getLogger(__name__)

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is a quota in disguise: not worth waiting for
MAX_THROTTLE_RETRIES = 30  # 429s are retried until the deadline, but not forever without one


class AdaptiveLimiter:
    """AIMD concurrency limit between 1 and `maximum`, plus an endpoint-wide pause after `Retry-After`.

    Only 429s to requests sent after the last cut count towards the next one: the
    requests already in flight when the endpoint started refusing belong to the same
    episode and must not halve the limit once each.
    """

    def __init__(self, maximum: int, name: str = "") -> None:
        self.maximum = max(1, maximum)
        self.name = name
        self._limit = self.maximum
        self._successes = 0  # since the limit last changed
        self._refusals = 0  # 429s in a row (no success between) to requests sent after the last cut
        self._in_flight = 0
        self._resume_at = 0.0  # monotonic time before which no request is sent
        self._last_cut = -math.inf
        self._cond = threading.Condition()
        _LIMITERS.add(self)

    @property
    def limit(self) -> int:
        """The number of requests allowed in flight now."""
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self, deadline: float | None = None) -> bool:
        """Wait for a slot (and for any pause to end); False when `deadline` comes first."""
        with self._cond:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                if self._in_flight < self._limit and now >= self._resume_at:
                    self._in_flight += 1
                    return True
                wait = self._resume_at - now if now < self._resume_at else None
                if deadline is not None:
                    wait = deadline - now if wait is None else min(wait, deadline - now)
                self._cond.wait(wait)

    def release(self, started: float, *, success: bool, throttled: bool = False, pause: float | None = None) -> None:
        """Return the slot of a request sent at `started` (monotonic) and learn from its outcome."""
        with self._cond:
            self._in_flight -= 1
            now = time.monotonic()
            if throttled and started >= self._last_cut:
                self._successes = 0
                self._refusals += 1
                if self._refusals >= max(2, math.ceil(self._limit / 2)):  # repeated: the endpoint is saturated
                    self._refusals = 0
                    self._last_cut = now
                    if pause:
                        self._resume_at = max(self._resume_at, now + pause)
                    if self._limit > 1:
                        before = self._limit
                        self._limit = max(1, self._limit // 2)
                        METRICS.inc(CONCURRENCY_DECREASES)
                        logger.info(
                            "端点持续限流，并发降为 %d (endpoint keeps throttling: concurrency %d -> %d)",
                            self._limit, before, self._limit,
                        )
            elif success:
                self._refusals = 0
            if success and self._limit < self.maximum:
                self._successes += 1
                if self._successes >= self._limit:  # a whole round went through: one more
                    self._successes = 0
                    self._limit += 1
                    logger.debug("Concurrency back up to %d", self._limit)
            self._cond.notify_all()


_LIMITERS: weakref.WeakSet[AdaptiveLimiter] = weakref.WeakSet()


def _limit_samples() -> Iterator[tuple[tuple[tuple[str, str], ...], float]]:
    """One sample per model (the lowest limit if several clients serve it: one series per label set)."""
    limits: dict[str, int] = {}
    for limiter in list(_LIMITERS):
        limits[limiter.name] = min(limiter.limit, limits.get(limiter.name, limiter.limit))
    for name, limit in sorted(limits.items()):
        yield (("model", name),), limit


METRICS.gauge("concurrency_limit", "Requests the client currently allows in flight (AIMD).", _limit_samples)


def retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `retry-after` seconds or HTTP date)."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def backoff(retries: int) -> float:
    """Exponential backoff with up to 25 % jitter, so parallel workers do not retry in lockstep."""
    return min(INITIAL_BACKOFF * 2.0**retries, MAX_BACKOFF) * (1 - 0.25 * random.random())


def is_throttle(exc: BaseException) -> bool:
    """A 429 that asks us to slow down (not an exhausted quota, which no wait will cure)."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code != 429:
        return False
    response = exc.response
    return not is_quota_exhausted(429, response.text, response.headers)


def _is_outage(exc: openai.APIStatusError) -> bool:
    """A 5xx the error table reads as a server fault, not as a refusal of the request.

    llama-cpp-python answers a response_format it does not know with a 500: repeating
    the same request would pay for the same refusal; the client steps down instead.
    """
    return classify(exc, model="", base_url="", timeout=0.0).kind is ErrorKind.SERVER


def retry_delay(exc: BaseException, retries: int, max_retries: int, deadline: float | None) -> float | None:
    """Seconds to wait before repeating the request that raised `exc`, or None: do not repeat.

    `retries` is how many times this call was already repeated. Throttling (429) is
    retried until the deadline (the limiter keeps it to one request at a time), other
    transient failures `max_retries` times; nothing is retried past the deadline.
    """
    headers = None
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        budget = max_retries
    elif isinstance(exc, openai.APIStatusError):
        headers = exc.response.headers
        status = exc.status_code
        if headers.get("x-should-retry") == "false":
            return None
        if is_throttle(exc):
            budget = MAX_THROTTLE_RETRIES if deadline is not None else max_retries
        elif status in (408, 409) or (status >= 500 and _is_outage(exc)):
            budget = max_retries
        else:
            return None
    else:
        return None
    if retries >= budget:
        return None
    asked = retry_after(headers)
    if asked is not None and asked > MAX_RETRY_AFTER:
        return None
    delay = asked if asked is not None and asked > 0 else backoff(retries)
    if deadline is not None and time.monotonic() + delay >= deadline:
        logger.debug("Not retrying: the wait (%.1f s) would pass the batch deadline", delay)
        return None
    return delay
