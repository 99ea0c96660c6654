"""The import job of one project: predict its pending tasks chunk by chunk and post the predictions.

Each chunk is read from Label Studio first (`chunk_io.fetch`), so a task that already has a
prediction of this `model_version` (from `/predict`, or from a worker killed before it could
record it) is skipped and a deleted task dropped; it is predicted with the project's engine
(`Predictor.predict_batch`, under the shared `LLM_CONCURRENCY`, quota ledger and model pool)
and its predictions are posted in one request. The batch job's rules decide the rest
(`jobs.batch`): the chunk size, the stop when every model of the pool is out for the day,
and the stop after whole chunks failed for reasons that are not the tasks' own.

When the day's quota is spent the job stops and says when it comes back; it is taken up
again every `QUOTA_POLL` seconds (a cleared ledger resumes it at once) and at the reset.
Tasks refused by the quota or by a failing endpoint stay pending; a task that fails for its
own reason (no text, refused content) is failed, with the reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from ..jobs.batch import STOP_AFTER_FAILED_CHUNKS, default_chunk_size, quota_stop
from ..llm.batch_stats import BatchStats
from ..llm.errors import TASK_KINDS
from ..predicting.predictor import Predictor
from ..storage.leases import Renewer
from ..telemetry.metrics import API_REQUESTS, METRICS
from . import tokens
from .chunk_io import fetch, post_predictions
from .config import ImportConfig
from .queue import ImportQueue, now

logger = logging.getLogger(__name__)

LEASE = 60.0  # seconds a killed worker on another host keeps a project; renewed every third of it while working
DRAIN_SECONDS = 300.0  # one turn on a project, then the lease goes back (other projects, RQ job timeouts)
QUOTA_POLL = 10.0  # seconds between two looks at the quota ledger while the quota is out (a read, no call)
PIPELINE = 2  # chunks in flight: one posts its predictions while the next is predicted (LLM_CONCURRENCY caps both)
RETRY_AFTER_ERROR = 60.0  # seconds before a job that could not reach Label Studio or the endpoint tries again

IMPORT_QUEUED = "import_tasks_queued"  # counters of telemetry.metrics
IMPORT_POSTED = "import_predictions_posted"
IMPORT_SKIPPED = "import_tasks_skipped"
IMPORT_FAILED = "import_tasks_failed"
IMPORT_QUOTA_WAITS = "import_quota_waits"

PredictorSource = Callable[[int, str, Any], Predictor]  # (project, label config, extra params) -> its predictor
Connect = Callable[[str, str], LabelStudio]  # (Label Studio URL, API key) -> an SDK client


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
        self.queue.wait(self.project, 0.0, "")  # a paused job goes on: its note goes
        with ThreadPoolExecutor(PIPELINE, thread_name_prefix=f"import-{self.project}") as pool:
            return self._chunks(pool, client, predictor, until)

    def _chunks(self, pool: ThreadPoolExecutor, client: LabelStudio, predictor: Predictor, until: float) -> str:
        """Chunks, `PIPELINE` at a time, until none is left, the quota is out, the endpoint is down or time is up."""
        size = default_chunk_size(predictor)
        in_flight: dict[Future[tuple[int, bool]], list[int]] = {}
        failed_chunks, stop, mark = 0, "", time.monotonic()
        while True:
            stop = stop or quota_stop(predictor)
            if not stop and failed_chunks < STOP_AFTER_FAILED_CHUNKS and time.monotonic() < until \
                    and len(in_flight) < PIPELINE:
                busy = {i for ids in in_flight.values() for i in ids}
                ids = [i for i in self.queue.pending(self.project, size + len(busy)) if i not in busy][:size]
                if ids:
                    in_flight[pool.submit(self._chunk, client, predictor, ids)] = ids
                    continue
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                del in_flight[future]
                posted, endpoint_failed = future.result()
                failed_chunks = failed_chunks + 1 if not posted and endpoint_failed else 0
            stamp = time.monotonic()  # the turn's working time, chunks in flight together counted once
            self.queue.settle(self.project, busy=stamp - mark)
            mark = stamp
        if stop:
            return self._wait_for_quota(predictor, stop)
        if failed_chunks >= STOP_AFTER_FAILED_CHUNKS:
            note = f"连续多批全部失败，{RETRY_AFTER_ERROR:.0f} 秒后重试 (every task of the last chunks failed: " \
                   f"retrying in {RETRY_AFTER_ERROR:.0f} s)"
            self.queue.wait(self.project, now() + RETRY_AFTER_ERROR, note)
            logger.warning("导入任务 project %s: %s", self.project, note)
            return note
        if time.monotonic() >= until:
            return "turn over"
        return "finished" if self.queue.close_if_done(self.project) else "more tasks arrived"

    def _chunk(self, client: LabelStudio, predictor: Predictor, ids: list[int]) -> tuple[int, bool]:
        """Predict and post one chunk: (predictions posted, whether a failure was not the tasks' own)."""
        fetched = fetch(client, self.project, ids, predictor.model_version)
        self.queue.settle(self.project, skipped=fetched.skipped)
        METRICS.inc(IMPORT_SKIPPED, len(fetched.skipped))
        if not fetched.tasks:
            return 0, False
        stats = BatchStats()
        # no Label Studio request waits on a chunk: no deadline (the LLM client's own timeouts still apply)
        predictions = predictor.predict_batch(fetched.tasks, project=str(self.project), stats=stats, deadline=None)
        made = [(t["id"], p) for t, p in zip(fetched.tasks, predictions, strict=True) if "result" in p]
        errors = Counter(str(p.get("error") or "unknown error") for p in predictions if "result" not in p)
        posted, refused = post_predictions(client, self.project, made)
        self.queue.settle(self.project, posted=posted, calls=int(stats.calls.get(API_REQUESTS)))
        METRICS.inc(IMPORT_POSTED, len(posted))
        failed = [t["id"] for t in fetched.tasks if t["id"] not in set(posted)]
        endpoint_failed = bool(refused) or any(kind not in TASK_KINDS for kind in stats.kinds)
        # Out of quota, or the endpoint down: the tasks stay pending for the next turn, not failed.
        if failed and not quota_stop(predictor) and (posted or not endpoint_failed):
            self.queue.settle(self.project, failed=failed, errors=errors + refused)
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
