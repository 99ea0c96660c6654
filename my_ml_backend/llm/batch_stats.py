"""What one batch of predictions cost and how it went, counted from worker threads and logged once.

The LLM client's events fill `calls` (cache hits and misses, requests, retries, tokens paid);
the predictor counts each task's outcome. One INFO line per batch, so a user sees what a
"Retrieve predictions" spent without reading every request.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

from ..telemetry import metrics as m
from ..telemetry.activity import BatchProgress
from ..telemetry.metrics import Tally
from .errors import PredictionError
from .hooks import BatchFinished, Hooks, TaskFailed
from .observers import process_hooks

logger = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """What one batch cost and how it went; logged once per batch. Updated from worker threads.

    `calls` is filled from the LLM client's events (cache hits and misses, requests,
    retries, tokens paid); calls still running after the deadline keep adding to it.
    """

    tasks: int = 0
    succeeded: int = 0
    calls: Tally = field(default_factory=Tally)
    errors: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)  # the same errors by `ErrorKind`
    hooks: Hooks = field(default_factory=process_hooks, repr=False)  # who hears of failed tasks and the batch's end
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_success(self) -> None:
        with self._lock:
            self.succeeded += 1

    def count_error(self, err: PredictionError) -> None:
        self.hooks.emit(TaskFailed(err))
        with self._lock:
            self.errors[str(err)] += 1
            self.kinds[str(err.kind)] += 1

    def log(self, seconds: float, progress: BatchProgress, concurrency_limit: int) -> None:
        """The batch's one log line (and its row on the status page), then each distinct error with its count."""
        get = self.calls.get  # the counters the LLM client filled for this batch
        tokens = int(get(m.PROMPT_TOKENS) + get(m.COMPLETION_TOKENS))
        requests, hits = int(get(m.API_REQUESTS)), int(get(m.CACHE_HITS))
        self.hooks.emit(BatchFinished(progress, self.succeeded, requests, hits, tokens))
        logger.info(
            "批次完成 (batch done): %d 个任务, %d 成功, %d 失败, 缓存命中 %d/未命中 %d (cache hits/misses), "
            "API 请求 %d (requests), 重试 %d (retries), 429 × %d, 并发上限 %d (concurrency limit), "
            "tokens %d+%d, %.2f s",
            self.tasks, self.succeeded, self.tasks - self.succeeded,
            get(m.CACHE_HITS), get(m.CACHE_MISSES), get(m.API_REQUESTS), get(m.API_RETRIES),
            get(m.API_THROTTLED), concurrency_limit, get(m.PROMPT_TOKENS), get(m.COMPLETION_TOKENS), seconds,
        )
        for message, count in self.errors.items():
            logger.warning("%s × %d", message, count)
