"""The batch job: pre-annotate a whole Label Studio project through its API.

Label Studio gives one `/predict` 100 s, so "Retrieve predictions" on thousands of
tasks cannot finish; its maintainers advise a batch job that posts predictions
through the API instead. This is that job, with the backend's own engine:
- the same `model_version` as the backend reports for the project's config, so
  tasks predicted by either are skipped by both;
- tasks that already hold a prediction of that version are skipped, and each
  prediction is posted as soon as its chunk is done, so an interrupted run resumes
  where it stopped (and the response cache makes redone calls free);
- failed tasks are reported and left without a prediction for the next run.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk import LabelStudio
from tqdm import tqdm

from ..labeling import packing
from ..llm.batch_stats import BatchStats
from ..llm.errors import TASK_KINDS, ErrorKind
from ..llm.pool import MODEL_ANSWERS, MODEL_REFUSALS
from ..predicting.predictor import Predictor
from ..telemetry.metrics import API_REQUESTS, CACHE_HITS, COMPLETION_TOKENS, METRICS, PROMPT_TOKENS

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
# Whole chunks failing in a row, not for the tasks' own reasons (`TASK_KINDS`): a bad key or a dead endpoint.
STOP_AFTER_FAILED_CHUNKS = 2


@dataclass
class Summary:
    """What one run did; printed at the end, also after an interruption."""

    project: int = 0
    model_version: str = ""
    total: int = 0
    skipped: int = 0
    predicted: int = 0
    posted: int = 0
    failed: int = 0
    api_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    stopped: str = ""
    errors: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)  # answers per pool model
    refusals: Counter[str] = field(default_factory=Counter)  # refusals that took a model out, per model

    def lines(self) -> list[str]:
        out = [
            f"项目 (project) {self.project}, model_version {self.model_version}",
            f"任务 (tasks): {self.total}; 已有预测跳过 (skipped, already predicted): {self.skipped}",
            f"预测 (predicted): {self.predicted}; 已写入 (posted): {self.posted}; 失败 (failed): {self.failed}",
            f"API 调用 (API calls): {self.api_calls}; 缓存命中 (cache hits): {self.cache_hits}; "
            f"tokens: {self.prompt_tokens} + {self.completion_tokens}; 用时 (time): {self.seconds:.1f} s",
        ]
        if self.models or self.refusals:
            answered = ", ".join(f"{m} × {n}" for m, n in self.models.most_common()) or "-"
            refused = ", ".join(f"{m} × {n}" for m, n in self.refusals.most_common()) or "-"
            out.append(f"回答的模型 (answered by): {answered}; 拒绝 (refusals): {refused}")
        out += [f"  {message} × {count}" for message, count in self.errors.most_common()]
        if self.stopped:
            out.append(f"已停止 (stopped): {self.stopped}. 重新运行同一命令即可继续 (rerun the same command to resume)")
        return out


class BatchJob:
    """Predict the not-yet-predicted tasks of one project and post the predictions."""

    def __init__(self, client: LabelStudio, project: int, predictor: Predictor, chunk_size: int) -> None:
        self.client = client
        self.project = project
        self.predictor = predictor
        self.chunk_size = max(1, chunk_size)

    def done_task_ids(self) -> set[int]:
        """Tasks that already hold a prediction of our model_version (from the backend or an earlier run)."""
        version = self.predictor.model_version
        predictions = self.client.predictions.list(project=self.project)
        return {p.task for p in predictions if p.model_version == version and p.task is not None}

    def pending(self, done: set[int], summary: Summary) -> Iterator[dict[str, Any]]:
        for task in self.client.tasks.list(project=self.project, page_size=PAGE_SIZE):
            summary.total += 1
            if task.id in done:
                summary.skipped += 1
                continue
            yield {"id": task.id, "data": task.data or {}}

    def run(self, limit: int | None = None, progress: bool = True) -> Summary:
        started = time.monotonic()
        summary = Summary(project=self.project, model_version=self.predictor.model_version)
        spending = Spending()
        done = self.done_task_ids()
        expected = self.client.projects.get(id=self.project).task_number or None
        bar = tqdm(total=expected, unit="task", disable=not progress, file=sys.stderr, desc="pre-annotating")
        bar.update(len(done))
        failed_chunks = 0
        pending = self.pending(done, summary)
        try:
            for chunk in chunks(pending, self.chunk_size, limit):
                posted, kinds = self.predict_and_post(chunk, summary)
                bar.update(len(chunk))
                bar.set_postfix(failed=summary.failed, calls=spending.calls())
                # a chunk of tasks without text (or refused for their own content) says nothing of the next ones
                endpoint_failed = any(kind not in TASK_KINDS for kind in kinds)
                failed_chunks = failed_chunks + 1 if not posted and endpoint_failed else 0
                if stop := quota_stop(self.predictor):
                    summary.stopped = stop
                    break
                if failed_chunks >= STOP_AFTER_FAILED_CHUNKS:
                    summary.stopped = "连续多批全部失败 (every task of the last chunks failed)"
                    break
            else:
                if limit is not None and next(pending, None) is not None:
                    summary.stopped = f"已达到 --limit {limit}，还有未预测的任务 (reached --limit, tasks remain)"
        except KeyboardInterrupt:
            summary.stopped = "被中断 (interrupted)"
        finally:
            bar.close()
            spending.record(summary)
            summary.seconds = time.monotonic() - started
            summary.total = max(summary.total, expected or 0)
        return summary

    def predict_and_post(
        self, chunk: list[dict[str, Any]], summary: Summary, on_posted: Callable[[int], None] | None = None
    ) -> tuple[int, Counter[str]]:
        """Predict one chunk and post its successful predictions: how many were posted, and the failures by kind
        (a refused post counts as `connection`: Label Studio, not the task).

        `on_posted(task_id)` runs right after each post (the queued job marks the task done).
        """
        posted, stats = 0, BatchStats()
        # no Label Studio waiting on a chunk: no deadline (the LLM client's own timeout still applies)
        predictions = self.predictor.predict_batch(chunk, project=str(self.project), stats=stats, deadline=None)
        for task, prediction in zip(chunk, predictions, strict=True):
            if "result" not in prediction:
                summary.failed += 1
                summary.errors[prediction.get("error", "unknown error")] += 1
                continue
            summary.predicted += 1
            try:
                self.client.predictions.create(
                    task=task["id"],
                    result=prediction["result"],
                    score=prediction.get("score"),
                    model_version=prediction["model_version"],
                )
            except Exception as exc:  # noqa: BLE001 - one refused post must not stop the project
                summary.failed += 1
                summary.errors[f"写入预测失败 (posting the prediction failed): {type(exc).__name__}"] += 1
                stats.kinds[ErrorKind.CONNECTION] += 1
                logger.debug("Task %s: posting failed: %s", task["id"], exc)
                continue
            summary.posted += 1
            posted += 1
            if on_posted is not None:
                on_posted(task["id"])
        return posted, stats.kinds


def quota_stop(predictor: Predictor) -> str:
    """Why a run must stop now: every model of the pool is out for today ("" while one may still answer).

    Both the in-process job and the queued one (command and workers) stop on it, so they stop
    the same way, with the message that says when the quota comes back, instead of failing
    every remaining task at once with that message.
    """
    pool = predictor.client.pool
    return "" if pool.usable() else pool.exhausted_error().message


class Spending:
    """What this process spends from now on (API requests, cache hits, tokens, answers and refusals per model),
    read from its metrics, which count every call whoever made it."""

    def __init__(self) -> None:
        self.counters = counters()
        self.answers, self.refusals = model_counts()

    def calls(self) -> int:
        return int(METRICS.get(API_REQUESTS) - self.counters[API_REQUESTS])

    def record(self, summary: Summary) -> None:
        """Set the summary's call, cache, token and per-model figures to what was spent since this began."""
        spent = {name: int(value - self.counters[name]) for name, value in counters().items()}
        summary.api_calls, summary.cache_hits = spent[API_REQUESTS], spent[CACHE_HITS]
        summary.prompt_tokens, summary.completion_tokens = spent[PROMPT_TOKENS], spent[COMPLETION_TOKENS]
        answers, refusals = model_counts()
        summary.models, summary.refusals = answers - self.answers, refusals - self.refusals


def model_counts() -> tuple[Counter[str], Counter[str]]:
    """Answers and refusals per pool model in this process so far."""
    answers = Counter({m: int(v) for m, v in METRICS.by_label(MODEL_ANSWERS, "model").items()})
    refusals = Counter({m: int(v) for m, v in METRICS.by_label(MODEL_REFUSALS, "model").items()})
    return answers, refusals


def counters() -> dict[str, float]:
    """This process's API requests, cache hits and tokens so far."""
    return {name: METRICS.get(name) for name in (API_REQUESTS, CACHE_HITS, PROMPT_TOKENS, COMPLETION_TOKENS)}


def chunks(items: Iterator[dict[str, Any]], size: int, limit: int | None) -> Iterator[list[dict[str, Any]]]:
    """Consecutive lists of at most `size` items, `limit` items in all."""
    chunk: list[dict[str, Any]] = []
    for count, item in enumerate(items, start=1):
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
        if limit is not None and count >= limit:
            break
    if chunk:
        yield chunk


def default_chunk_size(predictor: Predictor) -> int:
    """Tasks per chunk: 4 per worker (at least 8), times the tasks a call can take, so packs can fill."""
    per_call = predictor.tasks_per_call
    return max(8, 4 * predictor.settings.concurrency) * (per_call if per_call >= 1 else packing.MAX_PACK)
