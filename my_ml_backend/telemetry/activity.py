"""What the backend is doing now and did lately, for the status page at `/`.

Label Studio shows nothing while a long `/predict` runs, and no ML backend says how far
a batch has got or why its tasks failed. The predictor reports here (a batch starts,
each task finishes), and so do the LLM layer's events (`llm.observers`: the batch ends
with its cost, a task failed, a model answered with the quota it said was left). The
status page reads `snapshot()`.

Where it is kept:
- per process (default): a few lists in memory; with several gunicorn workers each
  worker knows only its own batches, and the page says so;
- shared (`REDIS_URL` set): a few small keys in Redis, so every worker, replica and
  the `batch_predict.py` command show up on every page. One small write per finished
  task; Redis trouble costs a warning and falls back to memory for a while, never a task.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from ..settings import Settings
from ..storage import redis_db

logger = logging.getLogger(__name__)

REDIS_PREFIX = "llm-preannotation:activity:"
KEEP_BATCHES = 20  # finished batches shown on the page
RETRY_REDIS_AFTER = 30.0  # seconds of memory-only reporting after a Redis failure


def process_name() -> str:
    """`host pid N`: which replica and worker ran a batch, in a view shared by several."""
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass
class BatchProgress:
    """One batch, while it runs and after: what the status page shows in its tables."""

    id: str
    project: str
    total: int
    started: float  # Unix time
    deadline: float  # Unix time: Label Studio gives up on the reply after this
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    finished: float | None = None
    calls: int = 0  # API requests, retries included
    cache_hits: int = 0
    tokens: int = 0
    source: str = field(default_factory=process_name)
    updated: float = field(default_factory=time.time)

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started


@dataclass
class ErrorSeen:
    """Failed tasks of one error kind: how many, the last message and when."""

    kind: str
    count: int
    message: str
    last: float


@dataclass
class ModelSeen:
    """A model that answered: when last, and the quota its last answer said was left."""

    model: str
    last: float
    quota_remaining: int | None = None


@dataclass
class Snapshot:
    running: list[BatchProgress]
    finished: list[BatchProgress]
    errors: list[ErrorSeen]
    models: list[ModelSeen]
    shared: bool
    where: str


class MemoryActivity:
    """This process's view: a few bounded collections under one lock."""

    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, BatchProgress] = {}
        self._finished: deque[BatchProgress] = deque(maxlen=KEEP_BATCHES)
        self._errors: dict[str, ErrorSeen] = {}
        self._models: dict[str, ModelSeen] = {}
        self.where = f"仅本进程 (this process only: {process_name()})"

    def put_batch(self, batch: BatchProgress) -> None:
        with self._lock:
            if batch.finished is None:
                self._running[batch.id] = batch
            else:
                self._running.pop(batch.id, None)
                self._finished.appendleft(batch)

    def put_error(self, kind: str, message: str) -> None:
        with self._lock:
            seen = self._errors.get(kind)
            count = seen.count + 1 if seen else 1
            self._errors[kind] = ErrorSeen(kind, count, message, time.time())

    def put_model(self, seen: ModelSeen) -> None:
        with self._lock:
            self._models[seen.model] = seen

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                running=[BatchProgress(**asdict(b)) for b in self._running.values()],
                finished=list(self._finished),
                errors=sorted(self._errors.values(), key=lambda e: -e.last),
                models=sorted(self._models.values(), key=lambda m: -m.last),
                shared=False,
                where=self.where,
            )


class RedisActivity:
    """The view shared by every process that sets the same `REDIS_URL`."""

    shared = True

    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        self._redis = redis_db.connect(url)
        self.prefix = prefix
        self.where = f"共享视图 (shared view: {redis_db.describe(url)})"

    def put_batch(self, batch: BatchProgress) -> None:
        raw = json.dumps(asdict(batch), ensure_ascii=False)
        if batch.finished is None:
            self._redis.hset(self.prefix + "running", batch.id, raw)
            return
        pipe = self._redis.pipeline()
        pipe.hdel(self.prefix + "running", batch.id)
        pipe.lpush(self.prefix + "finished", raw)
        pipe.ltrim(self.prefix + "finished", 0, KEEP_BATCHES - 1)
        pipe.execute()

    def put_error(self, kind: str, message: str) -> None:
        pipe = self._redis.pipeline()
        pipe.hincrby(self.prefix + "error-counts", kind, 1)
        pipe.hset(self.prefix + "errors", kind, json.dumps({"message": message, "last": time.time()}))
        pipe.execute()

    def put_model(self, seen: ModelSeen) -> None:
        self._redis.hset(self.prefix + "models", seen.model, json.dumps(asdict(seen)))

    def snapshot(self) -> Snapshot:
        now = time.time()
        running = [BatchProgress(**json.loads(v)) for v in self._redis.hvals(self.prefix + "running")]
        # A process killed mid-batch never finishes its batch: forget it once Label Studio has given up.
        running = [b for b in running if now < b.deadline + 60]
        finished = [BatchProgress(**json.loads(v)) for v in self._redis.lrange(self.prefix + "finished", 0, -1)]
        counts = {_text(k): int(v) for k, v in self._redis.hgetall(self.prefix + "error-counts").items()}
        errors = []
        for kind, raw in self._redis.hgetall(self.prefix + "errors").items():
            info = json.loads(raw)
            errors.append(ErrorSeen(_text(kind), counts.get(_text(kind), 0), info["message"], info["last"]))
        models = [ModelSeen(**json.loads(v)) for v in self._redis.hvals(self.prefix + "models")]
        return Snapshot(
            running=sorted(running, key=lambda b: b.started),
            finished=finished,
            errors=sorted(errors, key=lambda e: -e.last),
            models=sorted(models, key=lambda m: -m.last),
            shared=True,
            where=self.where,
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Activity:
    """The registry the predictor reports to: memory always, Redis too when configured.

    Every report goes to memory first; with Redis it is also written there, and pages
    read Redis. A Redis failure is logged once and Redis is skipped for a while.
    """

    def __init__(self) -> None:
        self.memory = MemoryActivity()
        self.redis: RedisActivity | None = None
        self._redis_url: str | None = None
        self._skip_redis_until = 0.0
        self._lock = threading.Lock()

    def configure(self, settings: Settings) -> None:
        """Use Redis when `settings.redis_url` is set (called once per process with its settings)."""
        with self._lock:
            if settings.redis_url == self._redis_url:
                return
            self._redis_url = settings.redis_url
            self.redis = RedisActivity(settings.redis_url) if settings.redis_url else None

    def _shared(self, write: str, *args: Any) -> None:
        if self.redis is None or time.monotonic() < self._skip_redis_until:
            return
        try:
            getattr(self.redis, write)(*args)
        except Exception as exc:  # noqa: BLE001 - the status page must never cost a task
            self._skip_redis_until = time.monotonic() + RETRY_REDIS_AFTER
            logger.warning("状态页无法写入 Redis，暂用本进程视图 (status page: Redis write failed): %s", exc)

    def start_batch(self, project: str, total: int, deadline_seconds: float) -> BatchProgress:
        now = time.time()
        batch = BatchProgress(uuid.uuid4().hex[:12], project, total, now, now + deadline_seconds)
        self._put(batch)
        return batch

    def task_done(self, batch: BatchProgress, ok: bool) -> None:
        """One task of `batch` finished (called from the batch's own thread, in completion order)."""
        batch.done += 1
        batch.succeeded += ok
        batch.failed += not ok
        batch.updated = time.time()
        self._put(batch)

    def finish_batch(self, batch: BatchProgress, succeeded: int, calls: int, cache_hits: int, tokens: int) -> None:
        batch.finished = batch.updated = time.time()
        batch.done = batch.total
        batch.succeeded, batch.failed = succeeded, batch.total - succeeded
        batch.calls, batch.cache_hits, batch.tokens = calls, cache_hits, tokens
        self._put(batch)

    def _put(self, batch: BatchProgress) -> None:
        copy = BatchProgress(**asdict(batch))  # the page must never see a half-updated batch
        self.memory.put_batch(copy)
        self._shared("put_batch", copy)

    def error(self, kind: str, message: str) -> None:
        self.memory.put_error(kind, message)
        self._shared("put_error", kind, message)

    def model_answered(self, model: str, quota_remaining: int | None) -> None:
        seen = ModelSeen(model, time.time(), quota_remaining)
        self.memory.put_model(seen)
        self._shared("put_model", seen)

    def snapshot(self) -> Snapshot:
        """The shared view when Redis answers, else this process's."""
        if self.redis is not None:
            try:
                return self.redis.snapshot()
            except Exception as exc:  # noqa: BLE001
                logger.warning("状态页无法读取 Redis (status page: Redis read failed): %s", exc)
                snap = self.memory.snapshot()
                snap.where += "; Redis 不可用 (Redis unavailable)"
                return snap
        return self.memory.snapshot()


ACTIVITY = Activity()
"""This process's registry (the predictor reports to it, the status page reads it)."""
