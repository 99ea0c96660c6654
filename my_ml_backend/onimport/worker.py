"""Who works on the queued imports: a thread of the server, and with `REDIS_URL` any `rq worker`.

The server's thread looks for projects whose import job is due (new tasks, a pause over)
every `POLL` seconds, or at once when a webhook wakes it. Without Redis it takes each such
project itself (`ImportRun`). With Redis it enqueues one RQ job per due project on the
batch job's queue, so `rq worker llm-preannotation` processes on any machine take them;
a marker keeps a project from being enqueued twice, and a job whose worker was killed is
enqueued again once its lease has run out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path

from ..jobs.queue import QUEUE
from ..settings import load_env_file, load_settings
from ..storage import redis_db
from .config import ImportConfig, import_config
from .predictors import project_predictor, use_settings
from .queue import ImportQueue, now
from .queue_redis import RedisImportQueue
from .queue_sqlite import SQLiteImportQueue
from .runner import DRAIN_SECONDS, LEASE, Connect, ImportRun, PredictorSource

logger = logging.getLogger(__name__)

SQLITE_FILE = "onimport.sqlite3"
POLL = 2.0  # seconds between two looks for due projects (a webhook in this process wakes it at once)
ENQUEUED = "llm-preannotation:onimport:enqueued:"  # + project: an RQ job waits for a worker
ENQUEUED_TTL = 3600  # seconds: a job lost from RQ's queue is enqueued again after this


def open_queue(config: ImportConfig) -> ImportQueue:
    """Redis when `REDIS_URL` is set (workers anywhere), else SQLite in `DATA_DIR`."""
    if config.redis_url:
        return RedisImportQueue(config.redis_url)
    return SQLiteImportQueue(Path(config.data_dir) / SQLITE_FILE)


def owner_name() -> str:
    """`host:pid:random`: who holds a lease, so a process of the same host can tell it died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def free_dead_leases(queue: ImportQueue) -> list[int]:
    """Let go of the leases of this host's processes that are gone (`kill -9`): a restart resumes at once."""
    freed = []
    host = socket.gethostname()
    for project, owner in queue.holders().items():
        owner_host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if owner_host == host and pid.isdecimal() and int(pid) != os.getpid() and not alive(int(pid)):
            queue.let_go(project, owner)
            freed.append(project)
    return freed


class ImportWorker:
    """The server's thread: runs due import jobs itself (SQLite) or hands them to RQ workers (Redis)."""

    def __init__(self, queue: ImportQueue, config: ImportConfig, predictors: PredictorSource = project_predictor,
                 poll: float = POLL, connect: Connect | None = None) -> None:
        self.queue, self.config, self.predictors, self.poll, self.connect = queue, config, predictors, poll, connect
        self.owner = owner_name()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="predict-on-import", daemon=True)

    def start(self) -> ImportWorker:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                free_dead_leases(self.queue)
                for project in self.queue.due(now()):
                    if self._stop.is_set():
                        break
                    self.run_or_enqueue(project)
            except Exception:  # noqa: BLE001 - a broken queue read is logged; the thread goes on
                logger.exception("导入队列读取失败 (reading the import queue failed)")
            self._wake.wait(self.poll)

    def run_or_enqueue(self, project: int) -> str:
        if not self.config.redis_url:
            return ImportRun(self.queue, self.config, project, self.owner, self.predictors, self.connect).run()
        return enqueue(self.config.redis_url, project)


def enqueue(redis_url: str, project: int) -> str:
    """One RQ job for the project, unless one already waits for a worker."""
    from rq import Queue

    redis = redis_db.connect(redis_url)
    if not redis.set(f"{ENQUEUED}{project}", "1", nx=True, ex=ENQUEUED_TTL):
        return "already enqueued"
    Queue(QUEUE, connection=redis).enqueue(run_import_job, project, job_timeout=int(DRAIN_SECONDS + 2 * LEASE),
                                           result_ttl=3600, failure_ttl=86400,
                                           description=f"predict on import: project {project}")
    return "enqueued"


def run_import_job(project: int) -> str:
    """RQ job (a process entry): one turn on the project's import job, with settings read from the env and `.env`."""
    load_env_file()
    settings = load_settings()
    use_settings(settings)
    config = import_config(settings)
    if not (config.redis_url and config.can_run):
        raise RuntimeError("worker needs REDIS_URL, LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (env or .env)")
    redis_db.connect(config.redis_url).delete(f"{ENQUEUED}{project}")  # from now on a new turn may be enqueued
    return ImportRun(open_queue(config), config, project, owner_name(), project_predictor).run()
