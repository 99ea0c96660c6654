"""`batch_predict.py --queue`: the batch job spread over RQ workers on any number of machines.

The command side (`run_queued`) lists the project's tasks without a prediction of our
`model_version` (as the in-process job does), enqueues them in chunks as RQ jobs, and
shows one progress bar and one summary for the whole run, read from Redis. The worker
side (`predict_chunk`, run by `rq worker llm-preannotation` processes wherever the code
and `.env` are) predicts with the backend's own engine and posts through the Label
Studio SDK, with `LLM_CONCURRENCY` shared by all workers through Redis (`llm.limits`).

A worker claims each task before predicting it (`queue_state`) and skips done tasks;
a task claimed by a worker that died (kill -9, a lost machine) is free again when its
lease (`LLM_SLOT_LEASE`) ends, and one that was claimed before is first looked up in
Label Studio, in case the dead worker posted it just before dying. Hence: no task is
predicted twice, and interrupting and re-running resumes (Ctrl-C cancels the chunks
not started; chunks running finish).

The quota ledger is in the same Redis, so when every model is out for the day the
workers claim nothing more and the command cancels the chunks not started: the run
stops as the in-process one does (`batch.quota_stop`), tasks left for tomorrow instead
of failed, and the summary counts answers and refusals per model as the workers add them.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import Any

from label_studio_sdk import LabelStudio
from rq import Queue, Retry, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from tqdm import tqdm

from ..predicting.factory import build_predictor, project_evaluation
from ..predicting.predictor import Predictor
from ..settings import Settings, load_env_file, load_settings, reveal
from ..storage import redis_db
from ..storage.leases import Renewer
from .batch import BatchJob, Spending, Summary, chunks, quota_stop
from .queue_state import KEEP, STATS, RunState

logger = logging.getLogger(__name__)

QUEUE = "llm-preannotation"
JOB_TIMEOUT = 3600  # seconds for one chunk (RQ kills a job past it; the chunk's posted tasks stay done)
RESULT_TTL = 86400  # seconds a finished chunk (it holds its tasks' data) is kept
POLL = 0.5  # seconds between two progress reads
WAIT_FOR_BUSY = 0.5  # seconds between two looks at tasks another worker holds
INTERRUPTED = "被中断，未开始的块已取消 (interrupted: chunks not started were cancelled)"

# -- the worker side -------------------------------------------------------------------


class ChunkWorker(Worker):
    """`rq worker -w my_ml_backend.jobs.queue.ChunkWorker llm-preannotation`: RQ's worker, warm.

    RQ forks a work-horse per job; naming this class makes the worker import the
    engine (openai, the SDK) once, before forking, instead of in every chunk.
    """


def predict_chunk(project: int, model_version: str, run: str, chunk: list[dict[str, Any]]) -> dict[str, int]:
    """RQ job, the worker's entry (it reads the settings): predict and post the tasks of one chunk that nobody
    has done; returns this chunk's counts.

    The chunk carries the tasks' data: a worker that fetched a task by id
    (`GET /api/tasks/<id>`) would make Label Studio ask a connected backend for a
    prediction of it, as opening it in the labeling view does.
    """
    load_env_file()
    settings = load_settings()
    if not settings.redis_url or not settings.label_studio_url or not settings.label_studio_api_key:
        raise RuntimeError("worker needs REDIS_URL, LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (env or .env)")
    client = LabelStudio(base_url=settings.label_studio_url, api_key=reveal(settings.label_studio_api_key))
    label_config = client.projects.get(id=project).label_config
    predictor = build_predictor(label_config, settings, evaluation=project_evaluation(label_config, settings, project))
    if predictor.model_version != model_version:  # this machine's settings differ: never mix versions
        raise RuntimeError(f"worker model_version {predictor.model_version} != run's {model_version}: "
                           "give every worker the same MODELSCOPE_*/LLM_* settings as the command")
    state = RunState(redis_db.connect(settings.redis_url), project, model_version)
    token, lease = uuid.uuid4().hex, settings.slot_lease
    held: set[int] = set()
    renewer = Renewer(lease / 3, lambda: state.renew(list(held), token, lease), name="task-claims")
    totals: dict[str, int] = dict.fromkeys(STATS, 0)
    try:
        data = {int(t["id"]): t for t in chunk}
        remaining = list(data)
        while remaining and not quota_stop(predictor):  # out for today: leave the tasks unclaimed, for tomorrow
            codes = state.claim(remaining, token, lease)
            mine = [i for i in remaining if codes[i] in (1, 2)]
            held.update(mine)
            try:
                _predict_claimed(client, project, predictor, state, run, token, [data[i] for i in mine],
                                 tried={i for i in mine if codes[i] == 2}, totals=totals)
            finally:
                held.difference_update(mine)
            remaining = [i for i in remaining if codes[i] == 3]  # another worker holds them: wait and look again
            if remaining:
                time.sleep(WAIT_FOR_BUSY)
    finally:
        renewer.stop()
    return totals


def _predict_claimed(client: LabelStudio, project: int, predictor: Predictor, state: RunState, run: str,
                     token: str, chunk: list[dict[str, Any]], tried: set[int], totals: dict[str, int]) -> None:
    """`BatchJob.predict_and_post` on tasks this worker claimed, with every outcome recorded in Redis for the run."""
    if not chunk:
        return
    version = predictor.model_version
    already = [i for i in tried if any(p.model_version == version for p in client.predictions.list(task=i))]
    state.finish(already, token, done=True)  # posted by a worker that died before saying so
    tasks = [t for t in chunk if t["id"] not in already]
    job = BatchJob(client, project, predictor, max(1, len(tasks)))
    summary = Summary(skipped=len(already))
    spending = Spending()
    if tasks:
        job.predict_and_post(tasks, summary, on_posted=lambda task_id: state.finish([task_id], token, done=True))
    spending.record(summary)
    state.finish([t["id"] for t in tasks], token, done=False)  # the failed ones: for the next run
    values = {name: getattr(summary, name) for name in STATS}
    state.add(run, values, {"errors": summary.errors, "models": summary.models, "refusals": summary.refusals})
    for name, value in values.items():
        totals[name] += value


# -- the command side ------------------------------------------------------------------


def run_queued(client: LabelStudio, project: int, predictor: Predictor, settings: Settings, chunk_size: int,
               limit: int | None = None, progress: bool = True) -> Summary:
    """Enqueue the pending tasks in chunks, then follow the run in Redis until every chunk ended."""
    assert settings.redis_url
    redis = redis_db.connect(settings.redis_url)
    queue = Queue(QUEUE, connection=redis)
    version = predictor.model_version
    state = RunState(redis, project, version)
    started = time.monotonic()
    run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    summary = Summary(project=project, model_version=version)
    _cancel_queued(redis, state)  # an interrupted run's chunks: their tasks are listed again
    job = BatchJob(client, project, predictor, chunk_size)
    done = job.done_task_ids()
    expected = client.projects.get(id=project).task_number or None
    pending = job.pending(done, summary)
    jobs = []
    redis.delete(state.jobs_key)
    summary.stopped = quota_stop(predictor)  # every model out for today already: enqueue nothing
    out_of_quota = bool(summary.stopped)
    if out_of_quota:
        for _ in pending:  # nothing is enqueued, but listing the tasks counts them and the skips in the summary
            pass
    try:
        for chunk in chunks(pending, chunk_size, limit):
            jobs.append(queue.enqueue(
                predict_chunk, project, version, run, chunk, job_timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL,
                failure_ttl=KEEP, retry=Retry(max=1), description=f"project {project}: {len(chunk)} tasks",
            ))
            redis.rpush(state.jobs_key, jobs[-1].id)  # at once: an interrupted enqueue is cancelled next run
            redis.expire(state.jobs_key, KEEP)
    except KeyboardInterrupt:
        _cancel_queued(redis, state)
        summary.stopped = INTERRUPTED
        jobs = []  # nothing to follow
    if limit is not None and not summary.stopped and next(pending, None) is not None:
        summary.stopped = f"已达到 --limit {limit}，还有未预测的任务 (reached --limit, tasks remain)"
    enqueued = sum(len(j.args[3]) for j in jobs)
    print(f"已排队 (queued) {enqueued} 个任务 (tasks) in {len(jobs)} chunks on '{QUEUE}', run {run}; workers: "
          f"rq worker --url <REDIS_URL> -w {ChunkWorker.__module__}.ChunkWorker {QUEUE}", file=sys.stderr)
    bar = tqdm(total=expected, initial=len(done), unit="task", disable=not progress, file=sys.stderr,
               desc="pre-annotating")
    registry = StartedJobRegistry(queue=queue)
    failed_jobs: list[str] = []
    try:
        while True:
            registry.cleanup()  # chunks of a worker that died go back to the queue (RQ's retry)
            stats, _ = state.read(run)
            accounted = stats.get("posted", 0) + stats.get("failed", 0) + stats.get("skipped", 0)
            bar.n = len(done) + accounted
            bar.set_postfix(failed=stats.get("failed", 0), calls=stats.get("api_calls", 0))
            bar.refresh()
            if not out_of_quota and (stop := quota_stop(predictor)):  # the workers used the last of it
                out_of_quota, summary.stopped = True, stop
                _cancel_queued(redis, state)  # chunks not started would only fail
            statuses = [j.get_status(refresh=True) for j in jobs]
            if all(s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED)
                   for s in statuses):
                failed_jobs = [j.id for j, s in zip(jobs, statuses, strict=True) if s == JobStatus.FAILED]
                break
            time.sleep(POLL)
    except KeyboardInterrupt:
        _cancel_queued(redis, state)
        summary.stopped = INTERRUPTED
    finally:
        bar.close()
    stats, counts = state.read(run)
    summary.predicted, summary.posted = stats.get("predicted", 0), stats.get("posted", 0)
    summary.failed = stats.get("failed", 0)
    summary.api_calls, summary.cache_hits = stats.get("api_calls", 0), stats.get("cache_hits", 0)
    summary.prompt_tokens, summary.completion_tokens = stats.get("prompt_tokens", 0), stats.get("completion_tokens", 0)
    summary.skipped += stats.get("skipped", 0)
    summary.errors.update(counts["errors"])
    summary.models, summary.refusals = counts["models"], counts["refusals"]
    for job_id in failed_jobs:
        reason = (Job.fetch(job_id, connection=redis).latest_result() or None)
        message = getattr(reason, "exc_string", "") or "job failed"
        summary.errors[f"块失败 (chunk failed): {message.strip().splitlines()[-1][:200]}"] += 1
    if failed_jobs and not summary.stopped:
        summary.stopped = f"{len(failed_jobs)} 个块失败 (chunks failed)"
    summary.seconds = time.monotonic() - started
    summary.total = max(summary.total, expected or 0)
    return summary


def _cancel_queued(redis: Any, state: RunState) -> None:
    """Cancel the last run's chunks no worker has started (their tasks are listed again by the next run)."""
    ids = [i.decode() for i in redis.lrange(state.jobs_key, 0, -1)]
    for job in Job.fetch_many(ids, connection=redis):
        if job is not None and job.get_status(refresh=False) in (JobStatus.QUEUED, JobStatus.DEFERRED,
                                                                  JobStatus.SCHEDULED):
            job.cancel()
