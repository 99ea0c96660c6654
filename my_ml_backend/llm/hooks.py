"""Events the LLM layer emits, and the registry that hands them to whoever listens.

The client, the limiters and the batch tallies say what happened (a request went out,
a reply came back, a retry is due, ...) and know nothing of who counts it: `/metrics`,
the status page and the batch's own counters subscribe (`llm.observers`). A listener
that fails is logged and skipped: telemetry never costs a task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..telemetry.activity import BatchProgress
from ..telemetry.metrics import Tally
from .errors import Failure, PredictionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestSent:
    """A request is going out to the endpoint (each retry is one more)."""

    batch: Tally | None = None  # the counters of the batch that asked, if any


@dataclass(frozen=True)
class CacheLookedUp:
    """The response cache was asked for a request's answer."""

    hit: bool
    batch: Tally | None = None


@dataclass(frozen=True)
class ReplyReceived:
    """The endpoint answered (tokens paid, whatever the content turns out to be)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    quota_remaining: int | None  # what ModelScope's rate-limit headers said is left, when they said it
    seconds: float
    batch: Tally | None = None


@dataclass(frozen=True)
class RequestFailed:
    """A request failed; `failure` says whether waiting could cure it."""

    error: BaseException
    failure: Failure
    batch: Tally | None = None


@dataclass(frozen=True)
class RetryScheduled:
    """The request that just failed (its `RequestFailed` came first) will be sent again after `delay` seconds."""

    attempt: int  # the attempt that failed, from 1
    delay: float
    batch: Tally | None = None


@dataclass(frozen=True)
class ConcurrencyLowered:
    """Repeated 429s made a limiter allow fewer requests at once."""

    name: str
    before: int
    after: int
    shared: bool  # the limit every process shares through Redis


@dataclass(frozen=True)
class TaskFailed:
    """A task of a batch got no prediction."""

    error: PredictionError


@dataclass(frozen=True)
class BatchFinished:
    """A batch ended: what it cost and how many of its tasks succeeded."""

    progress: BatchProgress
    succeeded: int
    requests: int
    cache_hits: int
    tokens: int


Event = TypeVar("Event")


class Hooks:
    """Listeners by event type; `emit` calls those of the event's type, in the emitting thread."""

    def __init__(self) -> None:
        self._listeners: dict[type, tuple[Callable[[Any], None], ...]] = {}
        self._lock = threading.Lock()

    def on(self, event_type: type[Event], listener: Callable[[Event], None]) -> None:
        with self._lock:
            self._listeners[event_type] = (*self._listeners.get(event_type, ()), listener)

    def off(self, event_type: type[Event], listener: Callable[[Event], None]) -> None:
        with self._lock:
            self._listeners[event_type] = tuple(f for f in self._listeners.get(event_type, ()) if f != listener)

    def emit(self, event: object) -> None:
        for listener in self._listeners.get(type(event), ()):  # a tuple: listeners added meanwhile wait for the next
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not fail the call that emitted
                logger.exception("Listener %r failed on %s", listener, type(event).__name__)
