"""Telemetry subscribed to the LLM layer's events: `/metrics` counters, the batch's tally, the status page.

The one place that maps what happened (`llm.hooks`) to what is counted and shown, so
the call path holds no counting. Telemetry may not import the LLM layer, hence the
wiring lives here, on the LLM side.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

from ..telemetry.activity import ACTIVITY
from ..telemetry.metrics import (
    API_REQUESTS,
    API_RETRIES,
    API_THROTTLED,
    CACHE_HITS,
    CACHE_MISSES,
    COMPLETION_TOKENS,
    CONCURRENCY_DECREASES,
    ERRORS,
    METRICS,
    PROMPT_TOKENS,
    Labels,
    Tally,
)
from .errors import Failure
from .hooks import (
    BatchFinished,
    CacheLookedUp,
    ConcurrencyLowered,
    Hooks,
    ReplyReceived,
    RequestFailed,
    RequestSent,
    RetryScheduled,
    TaskFailed,
)
from .pacing import limits_by_name


def _count(batch: Tally | None, name: str, value: float = 1) -> None:
    """Counted for the process (`/metrics`) and, when a batch asked, for that batch's log line."""
    METRICS.inc(name, value)
    if batch is not None:
        batch.inc(name, value)


def _request_sent(event: RequestSent) -> None:
    _count(event.batch, API_REQUESTS)


def _cache_looked_up(event: CacheLookedUp) -> None:
    _count(event.batch, CACHE_HITS if event.hit else CACHE_MISSES)


def _reply_received(event: ReplyReceived) -> None:
    _count(event.batch, PROMPT_TOKENS, event.prompt_tokens)
    _count(event.batch, COMPLETION_TOKENS, event.completion_tokens)
    ACTIVITY.model_answered(event.model, event.quota_remaining)  # the status page's "model that answered last"


def _request_failed(event: RequestFailed) -> None:
    if event.failure is Failure.THROTTLE:  # an exhausted quota is not a throttle
        _count(event.batch, API_THROTTLED)


def _retry_scheduled(event: RetryScheduled) -> None:
    _count(event.batch, API_RETRIES)


def _concurrency_lowered(_event: ConcurrencyLowered) -> None:
    METRICS.inc(CONCURRENCY_DECREASES)


def _task_failed(event: TaskFailed) -> None:
    METRICS.inc(ERRORS, kind=str(event.error.kind))
    ACTIVITY.error(str(event.error.kind), event.error.message)


def _batch_finished(event: BatchFinished) -> None:
    ACTIVITY.finish_batch(event.progress, event.succeeded, event.requests, event.cache_hits, event.tokens)


def subscribe_telemetry(hooks: Hooks) -> None:
    """Count and show every event `hooks` carries."""
    hooks.on(RequestSent, _request_sent)
    hooks.on(CacheLookedUp, _cache_looked_up)
    hooks.on(ReplyReceived, _reply_received)
    hooks.on(RequestFailed, _request_failed)
    hooks.on(RetryScheduled, _retry_scheduled)
    hooks.on(ConcurrencyLowered, _concurrency_lowered)
    hooks.on(TaskFailed, _task_failed)
    hooks.on(BatchFinished, _batch_finished)


def _limit_samples() -> Iterator[tuple[Labels, float]]:
    for name, limit in sorted(limits_by_name().items()):
        yield (("model", name),), limit


@cache
def process_hooks() -> Hooks:
    """The hooks every client and batch of this process reports to unless given others; telemetry listens."""
    hooks = Hooks()
    subscribe_telemetry(hooks)
    METRICS.gauge("concurrency_limit", "Requests the client currently allows in flight (AIMD).", _limit_samples)
    return hooks
