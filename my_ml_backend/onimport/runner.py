"""The import job of one project: predict its pending tasks chunk by chunk and post the predictions.

The batch job's own pieces do the work (`jobs.batch`): the chunk size, predicting a chunk
with the project's engine and posting each prediction through the SDK as soon as it is
made, and the stop when every model of the pool is out for the day. Before a chunk, its
tasks are read from Label Studio with the model versions of their predictions, so a task
that already has one of this `model_version` (posted by `/predict`, or by a worker killed
before it could say so) is skipped, and a task deleted since the import is dropped.

When the day's quota is spent the job stops, and says when it comes back; it is taken up
again every `QUOTA_POLL` seconds (a cleared ledger resumes it at once) and at the reset.
Whole chunks failing for reasons that are not the tasks' own (the endpoint is down) leave
their tasks pending and pause the job; a task that fails for its own reason is failed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from ..jobs.batch import STOP_AFTER_FAILED_CHUNKS, BatchJob, Summary, counters, default_chunk_size, quota_stop
from ..llm.errors import TASK_KINDS
from ..llm.limits import Renewer
from ..predictor import Predictor
from ..telemetry.metrics import API_REQUESTS, METRICS
from . import tokens
from .config import ImportConfig
from .queue import ImportQueue, now

logger = logging.getLogger(__name__)

LEASE = 60.0  # seconds a killed worker on another host keeps a project; renewed every third of it while working
DRAIN_SECONDS = 300.0  # one turn on a project, then the lease goes back (other projects, RQ job timeouts)
QUOTA_POLL = 10.0  # seconds between two looks at the quota ledger while the quota is out (a read, no call)
RETRY_AFTER_ERROR = 60.0  # seconds before a job that could not reach Label Studio or the endpoint tries again

IMPORT_QUEUED = "import_tasks_queued"  # counters of telemetry.metrics
IMPORT_POSTED = "import_predictions_posted"
IMPORT_SKIPPED = "import_tasks_skipped"
IMPORT_FAILED = "import_tasks_failed"
IMPORT_QUOTA_WAITS = "import_quota_waits"

PredictorSource = Callable[[int, str, Any], Predictor]  # (project, label config, extra params) -> its predictor
Connect = Callable[[str, str], LabelStudio]  # (Label Studio URL, API key) -> an SDK client


@dataclass(frozen=True)
class Fetched:
    """A chunk's ids as Label Studio has them now: tasks to predict, and ids to skip."""

    tasks: list[dict[str, Any]]
    skipped: list[int]


def fetch(client: LabelStudio, project: int, ids: list[int], model_version: str) -> Fetched:
    """The tasks `ids` (data, and the versions of their predictions) in one Data Manager read."""
    query = json.dumps({"selectedItems": {"all": False, "included": ids}})
    found = {t.id: t for t in client.tasks.list(project=project, query=query, fields="all", page_size=len(ids),
                                                   include="id,data,predictions_model_versions")}
    tasks, skipped = [], []
    for task_id in ids:
        task = found.get(task_id)
        versions = str(getattr(task, "predictions_model_versions", "") or "").split(",")
        if task is None or model_version in versions:
            skipped.append(task_id)
        else:
            tasks.append({"id": task_id, "data": task.data or {}})
    return Fetched(tasks, skipped)


class ImportRun:
    """One worker's turn on one project's import job (`run()`), holding the project's lease throughout."""

    def __init__(self, queue: ImportQueue, config: ImportConfig, project: int, owner: str,
                 predictors: PredictorSource, connect: Connect | None = None) -> None:
        self.queue, self.config, self.project, self.owner = queue, config, project, owner
        self.predictors, self.connect = predictors, connect or tokens.connect

    def run(self, seconds: float = DRAIN_SECONDS) -> str:
        """Work on the project for up to `seconds`; how the turn ended, in words."""
        if not self.queue.hold(self.project, self.owner, LEASE):
            return "held by another worker"
        renewer = Renewer(LEASE / 3, lambda: self.queue.hold(self.project, self.owner, LEASE),
                          name=f"import-lease-{self.project}")
        try:
            return self._run(time.monotonic() + seconds)
        except Exception as exc:  # noqa: BLE001 - the job waits and tries again; its tasks stay pending
            error = tokens.explain(exc, self.config.label_studio_key or "")
            note = f"出错，{RETRY_AFTER_ERROR:.0f} 秒后重试 (failed, retrying in {RETRY_AFTER_ERROR:.0f} s): " \
                   f"{type(error).__name__}: {str(error)[:300]}"
            logger.warning("导入任务 project %s: %s", self.project, note)
            self.queue.wait(self.project, now() + RETRY_AFTER_ERROR, note)
            return note
        finally:
            renewer.stop()
            self.queue.let_go(self.project, self.owner)

    def _run(self, until: float) -> str:
        assert self.config.label_studio_url and self.config.label_studio_key
        client = self.connect(self.config.label_studio_url, self.config.label_studio_key)
        try:
            label_config = client.projects.get(id=self.project).label_config
        except ApiError as exc:
            if exc.status_code != 404:
                raise
            return self._drop_all("项目已删除 (project deleted)")
        stored = self.queue.extra_params(self.project)
        predictor = self.predictors(self.project, label_config or "", json.loads(stored) if stored else None)
        job = BatchJob(client, self.project, predictor, default_chunk_size(predictor))
        self.queue.wait(self.project, 0.0, "")  # a paused job goes on: its note goes
        failed_chunks = 0
        while time.monotonic() < until:
            if stop := quota_stop(predictor):
                return self._wait_for_quota(predictor, stop)
            ids = self.queue.pending(self.project, job.chunk_size)
            if not ids:
                return "finished" if self.queue.close_if_done(self.project) else "more tasks arrived"
            posted, endpoint_failed = self._chunk(client, job, ids)
            failed_chunks = failed_chunks + 1 if not posted and endpoint_failed else 0
            if failed_chunks >= STOP_AFTER_FAILED_CHUNKS:
                note = f"连续多批全部失败，{RETRY_AFTER_ERROR:.0f} 秒后重试 (every task of the last chunks failed: " \
                       f"retrying in {RETRY_AFTER_ERROR:.0f} s)"
                self.queue.wait(self.project, now() + RETRY_AFTER_ERROR, note)
                logger.warning("导入任务 project %s: %s", self.project, note)
                return note
        return "turn over"

    def _chunk(self, client: LabelStudio, job: BatchJob, ids: list[int]) -> tuple[int, bool]:
        """Predict and post one chunk: (predictions posted, whether a failure was not the tasks' own)."""
        started = time.monotonic()
        fetched = fetch(client, self.project, ids, job.predictor.model_version)
        self.queue.settle(self.project, skipped=fetched.skipped)
        METRICS.inc(IMPORT_SKIPPED, len(fetched.skipped))
        if not fetched.tasks:
            return 0, False
        summary, posted = Summary(), set()
        before = counters()[API_REQUESTS]

        def on_posted(task_id: int) -> None:  # at once: a worker killed after this post does not post it again
            posted.add(task_id)
            self.queue.settle(self.project, posted=[task_id])
            METRICS.inc(IMPORT_POSTED)

        # The batch job's chunk step (private today; `jobs` makes it public).
        _, kinds = job._predict_and_post(fetched.tasks, summary, on_posted=on_posted)
        failed = [t["id"] for t in fetched.tasks if t["id"] not in posted]
        endpoint_failed = any(kind not in TASK_KINDS for kind in kinds)
        # Out of quota, or the endpoint down: the tasks stay pending for the next turn, not failed.
        keep = bool(quota_stop(job.predictor)) or (not posted and endpoint_failed)
        calls = int(counters()[API_REQUESTS] - before)
        self.queue.settle(self.project, failed=[] if keep else failed, errors=None if keep else summary.errors,
                          calls=calls, busy=time.monotonic() - started)
        if not keep:
            METRICS.inc(IMPORT_FAILED, len(failed))
        return len(posted), endpoint_failed

    def _wait_for_quota(self, predictor: Predictor, stop: str) -> str:
        clock = predictor.client.pool.ledger.clock
        reset = clock.next_reset().timestamp()
        hhmm, full = clock.describe_reset()
        note = f"今日额度已用完，{hhmm} 恢复后自动继续 (daily quota used up: resumes by itself at {full})"
        self.queue.wait(self.project, min(reset, now() + QUOTA_POLL), note, until=reset)
        METRICS.inc(IMPORT_QUOTA_WAITS)
        logger.warning("导入任务 project %s 暂停 (import job paused): %s; %s", self.project, note, stop)
        return note

    def _drop_all(self, reason: str) -> str:
        while ids := self.queue.pending(self.project, 1000):
            self.queue.settle(self.project, skipped=ids)
        self.queue.close_if_done(self.project)
        logger.warning("导入任务 project %s: %s", self.project, reason)
        return reason
