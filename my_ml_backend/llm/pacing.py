"""Pacing of requests to the LLM endpoint: how many at once, and when to try again.

`LLM_CONCURRENCY` is what the user hopes the endpoint allows; repeated 429s say it
does not (a free tier may allow only one request at a time). `AdaptiveLimiter`
is an AIMD limit shared by all batch workers of a client: when half a round of
requests in a row is refused it halves, and pauses every worker for the server's
`Retry-After` (the others would only collect the same 429); each full round of
successes adds one back. So a saturated endpoint gets fewer requests instead of the
same number of retries, and full speed returns when it recovers. A stray 429 among
successes (a shared endpoint under load) only delays its own request.

`RetryPolicy` decides whether a failed request is worth repeating and after how
long (tenacity runs the loop). Every wait is bounded by the batch deadline: Label Studio
drops a `/predict` reply after `ML_TIMEOUT_PREDICT` seconds, so a retry that cannot
finish before it is money spent for nothing.
"""

from __future__ import annotations

import email.utils
import logging
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from .errors import Failure, failure_of
from .hooks import ConcurrencyLowered, Hooks

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Without a Retry-After: 0.5 s doubling up to 8 s, plus up to 0.5 s so that parallel workers do not retry in lockstep.
BACKOFF = tenacity.wait_exponential(multiplier=0.5, max=8.0) + tenacity.wait_random(0, 0.5)
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is a quota in disguise: not worth waiting for
MAX_THROTTLE_RETRIES = 30  # 429s are retried until the deadline, but not forever without one


class AdaptiveLimiter:
    """AIMD concurrency limit between 1 and `maximum`, plus an endpoint-wide pause after `Retry-After`.

    Only 429s to requests sent after the last cut count towards the next one: the
    requests already in flight when the endpoint started refusing belong to the same
    episode and must not halve the limit once each.
    """

    def __init__(self, maximum: int, name: str = "", hooks: Hooks | None = None) -> None:
        self.maximum = max(1, maximum)
        self.name = name
        self.hooks = hooks
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
                        if self.hooks is not None:
                            self.hooks.emit(ConcurrencyLowered(self.name, before, self._limit, shared=False))
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


def limits_by_name() -> dict[str, int]:
    """The limit each model is sent at now (the lowest, when several clients serve one model)."""
    limits: dict[str, int] = {}
    for limiter in list(_LIMITERS):
        limits[limiter.name] = min(limiter.limit, limits.get(limiter.name, limiter.limit))
    return limits


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


def asked_pause(exc: BaseException) -> float | None:
    """The wait a throttling server asked every worker to keep (bounded), or None."""
    response = getattr(exc, "response", None)
    asked = retry_after(response.headers) if response is not None else None
    return min(asked, MAX_RETRY_AFTER) if asked else None


def worth_repeating(exc: BaseException) -> bool:
    """A throttle or an outage the server did not ask us to give up on, and not a quota in disguise."""
    if failure_of(exc) not in (Failure.THROTTLE, Failure.OUTAGE):
        return False
    response = getattr(exc, "response", None)
    if response is None:  # a timeout or a dropped connection
        return True
    asked = retry_after(response.headers)
    return response.headers.get("x-should-retry") != "false" and (asked is None or asked <= MAX_RETRY_AFTER)


class RetryPolicy:
    """How one request is repeated: tenacity's loop with our predicates, budgets and the deadline.

    Throttles (429) are retried until the deadline, `MAX_THROTTLE_RETRIES` at most (the
    limiter keeps them to one request at a time), or `max_retries` times without a
    deadline; outages `max_retries` times, counted apart so that waiting on a throttle
    does not use them up. The wait is the server's `Retry-After`, else `BACKOFF`; a wait
    that would end past the deadline is not taken.
    """

    def __init__(
        self,
        max_retries: int,
        deadline: float | None,
        before_retry: Callable[[BaseException, int, float], None] | None = None,
    ) -> None:
        throttles = MAX_THROTTLE_RETRIES if deadline is not None else max_retries
        self._budget = {Failure.THROTTLE: throttles, Failure.OUTAGE: max_retries}
        self._used: Counter[Failure] = Counter()
        self._deadline = deadline
        self._before_retry = before_retry
        self._wait: tuple[int, float] = (0, 0.0)  # (attempt, wait): decided once, read by stop and wait

    def run(self, attempt: Callable[[], T]) -> T:
        """`attempt()` until it returns, or its last failure once the policy gives up.

        The callbacks take `retry_state` by that name: tenacity 8 passes it as a keyword.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(worth_repeating),
            stop=self._stop,
            wait=self._wait_for,
            before_sleep=self._announce,
            reraise=True,
        )
        return retrying(attempt)

    def _wait_for(self, retry_state: tenacity.RetryCallState) -> float:
        if self._wait[0] != retry_state.attempt_number:  # once per failure: the jitter must not change between reads
            exc = _failure(retry_state)
            asked = retry_after(getattr(getattr(exc, "response", None), "headers", None))
            self._wait = (retry_state.attempt_number, asked if asked else BACKOFF(retry_state))
        return self._wait[1]

    def _stop(self, retry_state: tenacity.RetryCallState) -> bool:
        failure = failure_of(_failure(retry_state))
        self._used[failure] += 1
        if self._used[failure] > self._budget[failure]:
            return True
        wait = self._wait_for(retry_state)
        if self._deadline is not None and time.monotonic() + wait >= self._deadline:
            logger.debug("Not retrying: the wait (%.1f s) would pass the batch deadline", wait)
            return True
        return False

    def _announce(self, retry_state: tenacity.RetryCallState) -> None:
        exc, wait = _failure(retry_state), self._wait_for(retry_state)
        logger.debug("Retry %d in %.2f s after %s", retry_state.attempt_number, wait, type(exc).__name__)
        if self._before_retry is not None:
            self._before_retry(exc, retry_state.attempt_number, wait)


def _failure(retry_state: tenacity.RetryCallState) -> BaseException:
    exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
    assert exc is not None  # tenacity asks only after a failed attempt
    return exc
