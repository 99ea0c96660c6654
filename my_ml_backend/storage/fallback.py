"""What a store that fails costs: a warning and a fallback, never a prediction.

Each store (response cache, quota ledger, example store) is opened once per location in a
process; one that cannot be opened is replaced by its fallback (nothing, or memory) with one
warning. A store that fails later (disk full, Redis down) is reported at most once per
`every` seconds, so an outage is one warning a minute, not one per task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypeVar, overload

logger = logging.getLogger(__name__)

Words = tuple[str, str]  # the same words in Chinese and in English, for bilingual log lines
READ: Words = ("读取", "read")
WRITE: Words = ("写入", "write")
CLEAR: Words = ("清除", "clear")

MAX_OPEN = 32  # stores kept open per process (a server has a few locations; a test session has many)


class Described(Protocol):
    @property
    def description(self) -> str:
        """Where the store is, for logs (never a password)."""
        ...


T = TypeVar("T", bound=Described)
F = TypeVar("F")
R = TypeVar("R")

_opened: OrderedDict[Hashable, Any] = OrderedDict()
_opened_lock = threading.Lock()


def open_once(key: Hashable, open_store: Callable[[], T], fallback: Callable[[], F], name: Words, then: Words) -> T | F:
    """The store opened at `key` in this process; opened now by `open_store()`, or `fallback()` when that fails.

    `name` says which store it is and `then` what running on without it means, for the warning.
    """
    with _opened_lock:
        if key in _opened:
            _opened.move_to_end(key)
            return _opened[key]
        store: T | F
        try:
            store = open_store()
        except Exception as exc:  # noqa: BLE001 - predictions still work without this store
            logger.warning("无法打开%s，%s (cannot open the %s, %s): %s: %s", name[0], then[0], name[1], then[1],
                           type(exc).__name__, exc)
            store = fallback()
        else:
            logger.info("%s (%s): %s", name[0], name[1], store.description)
        _opened[key] = store
        while len(_opened) > MAX_OPEN:
            _opened.popitem(last=False)
        return store


class StoreFailures:
    """Failures of one store: each costs the caller a default, and a warning at most once per `every` seconds."""

    def __init__(self, name: Words, then: Words, every: float = 60.0, count: Callable[[], None] | None = None) -> None:
        self.name = name
        self.then = then
        self.every = every
        self.count = count  # e.g. a metric of failed store calls
        self._last_warning = -float("inf")

    def report(self, action: Words, exc: BaseException) -> None:
        if self.count is not None:
            self.count()
        now = time.monotonic()
        if now - self._last_warning >= self.every:
            self._last_warning = now
            logger.warning(
                "%s%s失败，%s (%s %s failed, %s): %s: %s", self.name[0], action[0], self.then[0], self.name[1],
                action[1], self.then[1], type(exc).__name__, exc,
            )

    @overload
    def guard(self, action: Words, call: Callable[[], R]) -> R | None: ...

    @overload
    def guard(self, action: Words, call: Callable[[], R], default: R) -> R: ...

    def guard(self, action: Words, call: Callable[[], R], default: R | None = None) -> R | None:
        """`call()`, or `default` when the store failed."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - a broken store must not fail a task
            self.report(action, exc)
            return default
