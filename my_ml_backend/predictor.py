"""Predict a batch of tasks: prompt, one chat call per task, parse, map, validate.

Label Studio sends all selected tasks in one `/predict` and keeps nothing from a
malformed reply, so this returns exactly one prediction per task, in order, and a
task that fails gets an empty prediction instead of failing its batch. Errors that
would repeat for every task (no key, bad key, quota used up …) stop further calls.
What a batch cost (cache hits, requests, retries, tokens) is logged in one line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from .labeling import calibration, packing
from .labeling.parsing import parse_reply
from .labeling.prompts import CONFIDENCE_KEY, PromptGuidance, answer_schema, build_prompt, read_texts, wanted_targets
from .labeling.results import build_results
from .labeling.schema import LabelingSchema, Target
from .labeling.scoring import completeness, prediction_score, region_confidence
from .learning.retrieval import Shots
from .llm.client import ChatReply, LLMClient
from .llm.errors import PredictionError, deadline_reached, no_text, unexpected_error
from .llm.packed import Ask, answer_pack, default_tasks_per_call, pack_outcomes, plan_packs
from .settings import Settings
from .telemetry.activity import ACTIVITY, BatchProgress
from .telemetry.metrics import (
    API_REQUESTS,
    API_RETRIES,
    API_THROTTLED,
    BATCHES,
    CACHE_HITS,
    CACHE_MISSES,
    COMPLETION_TOKENS,
    ERRORS,
    METRICS,
    PROMPT_TOKENS,
    TASKS,
    Tally,
)

logger = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """What one batch cost and how it went; logged once per batch. Updated from worker threads.

    `calls` is filled by the LLM client (cache hits and misses, requests, retries,
    tokens paid); calls still running after the deadline keep adding to it.
    """

    tasks: int = 0
    succeeded: int = 0
    calls: Tally = field(default_factory=Tally)
    errors: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_success(self) -> None:
        with self._lock:
            self.succeeded += 1

    def count_error(self, err: PredictionError) -> None:
        METRICS.inc(ERRORS, kind=str(err.kind))
        ACTIVITY.error(str(err.kind), err.message)
        with self._lock:
            self.errors[str(err)] += 1


@dataclass
class PreparedTask:
    """A task ready to ask: its texts, the controls asked, its one-task call, its own size in tokens."""

    task: dict[str, Any]
    texts: dict[str, str]
    wanted: list[Target]
    ask: Ask
    tokens: int


@dataclass
class Plan:
    """How a packed batch will be asked: outcomes known without a call, and the packs to send."""

    prepared: dict[int, PreparedTask]
    ready: dict[int, dict[str, Any] | PredictionError]
    groups: list[list[int]]


@dataclass(frozen=True)
class PromptInputs:
    """What every prompt of a batch adds to its task's texts: guidance and the examples it may show."""

    guidance: PromptGuidance = field(default_factory=PromptGuidance)
    shots: Shots | None = None


class Predictor:
    """Predicts tasks of one labeling config with one LLM client."""

    def __init__(
        self,
        schema: LabelingSchema,
        settings: Settings,
        client: LLMClient,
        model_version: str,
        guidance: PromptGuidance | None = None,
        examples: Callable[[], Shots | None] | None = None,
        score_maps: calibration.ScoreMaps | None = None,
    ) -> None:
        self.schema, self.score_maps = schema, score_maps  # the project's (`learning.scorefit`)
        self.settings = settings
        self.client = client
        self.model_version = model_version
        self.guidance = guidance or PromptGuidance()
        self.examples = examples  # the project's annotated examples and their form, read once per batch
        self._priors: calibration.Priors = {}  # content-free priors (`_settle`)
        self._asked: set[str] = set()  # prompt languages whose priors were asked for
        self._priors_lock = threading.Lock()

    def prompt_inputs(self, guidance: PromptGuidance | None = None) -> PromptInputs:
        """Guidance (the request's own, else the project's) and the examples the batch may show."""
        shots = None
        if self.examples is not None:
            try:
                shots = self.examples()
            except Exception as exc:  # noqa: BLE001 - without examples the task is still predicted
                logger.warning("读取标注示例失败，本批不使用示例 (cannot read examples): %s", exc)
        return PromptInputs(guidance or self.guidance, shots)

    def predict_batch(
        self, tasks: list[dict[str, Any]], guidance: PromptGuidance | None = None, project: str = ""
    ) -> list[dict[str, Any]]:
        """One prediction per task, in order; never raises for a task's failure.

        Tasks run concurrently (`LLM_CONCURRENCY`). Label Studio drops the whole reply
        after `ML_TIMEOUT_PREDICT` seconds, so tasks not finished before our deadline
        (10 s earlier) get a failed item now rather than the batch getting nothing.
        """
        started = time.monotonic()
        inputs = self.prompt_inputs(guidance)
        deadline = started + self.settings.batch_deadline
        stats = BatchStats(tasks=len(tasks))
        METRICS.inc(BATCHES)
        METRICS.inc(TASKS, len(tasks))
        ACTIVITY.configure(self.settings)
        progress = ACTIVITY.start_batch(project, len(tasks), self.settings.batch_deadline)  # the status page's row
        fatal: list[PredictionError] = []  # the first error that would repeat for every task

        def run(task: dict[str, Any]) -> dict[str, Any]:
            if fatal:
                raise fatal[0]
            if time.monotonic() > deadline:
                raise deadline_reached()
            try:
                return self.predict_task(task, stats, deadline, inputs, settle=False)
            except PredictionError as err:
                if err.fatal:
                    fatal.append(err)  # seen by workers before they start their next task
                raise

        predictions: list[dict[str, Any] | None] = [None] * len(tasks)
        plan = self.plan(tasks, inputs, stats.calls) if self.tasks_per_call != 1 else None
        workers = max(1, min(self.settings.concurrency, len(tasks)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict")
        if plan is None:
            futures = {pool.submit(run, task): [i] for i, task in enumerate(tasks)}
        else:
            for i, ready in plan.ready.items():
                predictions[i] = self._settled(ready, tasks[i], stats)
            futures = {pool.submit(self._run_pack, plan, group, stats, deadline, fatal): group
                       for group in plan.groups}
        try:
            for future in as_completed(futures, timeout=max(0.0, deadline - time.monotonic())):
                group = futures[future]
                if plan is None:  # one task per call
                    predictions[group[0]] = self._outcome(future, tasks[group[0]], stats)
                    ACTIVITY.task_done(progress, "result" in predictions[group[0]])
                    continue
                for i, outcome in zip(group, pack_outcomes(future, len(group)), strict=True):
                    predictions[i] = self._settled(outcome, tasks[i], stats)
                    ACTIVITY.task_done(progress, "result" in predictions[i])
        except TimeoutError:
            logger.warning("批次接近时限，未完成的任务返回空预测 (batch deadline reached)")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for i, prediction in enumerate(predictions):
            if prediction is None:
                err = deadline_reached()
                stats.count_error(err)
                predictions[i] = self.failed_prediction(err)
        done = self._settle([p for p in predictions if p is not None], stats, deadline)
        self._log_batch(stats, time.monotonic() - started, progress)
        return done

    def _settle(self, predictions: list[dict], stats: BatchStats | None, deadline: float | None) -> list[dict]:
        """Calibrated choices and scores. Content-free priors are asked once per language, at the end of the first
        batch whose replies had alternatives, with a quarter of its time left (else it keeps the raw distribution)."""
        wanted = {p[calibration.PRIVATE_KEY]["lang"] for p in predictions if calibration.PRIVATE_KEY in p}
        with self._priors_lock:
            late = deadline is not None and deadline - time.monotonic() < self.settings.batch_deadline / 4
            if (missing := wanted - self._asked) and not late:
                self._asked |= missing  # once, whatever comes back: a failing endpoint is not asked every batch

                def answer(task: dict[str, Any]) -> dict[str, Any] | None:
                    try:
                        return self.predict_task(task, stats, deadline, PromptInputs(self.guidance), settle=False)
                    except PredictionError:
                        return None

                self._priors.update(calibration.content_free_priors(missing, self.schema.data_keys, answer))
        return calibration.settle(predictions, self._priors, self.score_maps)

    def _outcome(self, future: Future, task: dict[str, Any], stats: BatchStats) -> dict[str, Any]:
        try:
            outcome = future.result()
        except PredictionError as exc:
            outcome = exc
        except Exception:  # a bug must cost one task, not the batch
            logger.exception("Task %s: unexpected error", task.get("id"))
            outcome = unexpected_error()
        return self._settled(outcome, task, stats)

    def _settled(self, outcome: dict[str, Any] | PredictionError, task: dict[str, Any], stats: BatchStats) -> dict:
        """The item for one task's outcome, counted in the batch's stats."""
        if not isinstance(outcome, PredictionError):
            stats.count_success()
            return outcome
        stats.count_error(outcome)
        logger.debug("Task %s failed: %s", task.get("id"), outcome)
        return self.failed_prediction(outcome)

    @property
    def tasks_per_call(self) -> int:
        """LLM_TASKS_PER_CALL: N, or 0 for auto; unset: the endpoint's default."""
        n = self.settings.tasks_per_call
        return default_tasks_per_call(self.settings.base_url) if n is None else n

    def plan(self, tasks: list[dict[str, Any]], inputs: PromptInputs | None = None, tally: Tally | None = None) -> Plan:
        """Prepare every task, take what the cache knows, group the rest into packs (no call made)."""
        inputs = inputs or self.prompt_inputs()
        prepared: dict[int, PreparedTask] = {}
        ready: dict[int, dict[str, Any] | PredictionError] = {}
        for i, task in enumerate(tasks):
            try:
                prepared[i] = self.prepare_task(task, inputs)
            except PredictionError as err:
                ready[i] = err
        n = self.tasks_per_call
        budget, max_tokens = self.settings.pack_token_budget, self.settings.max_tokens

        def sizes(pending: list[int]) -> list[int]:
            if n >= 1:
                return packing.fixed_pack_sizes(len(pending), n)
            return packing.auto_pack_sizes([prepared[i].tokens for i in pending], budget, max_tokens)

        asks = {i: p.ask for i, p in prepared.items()}
        cached, groups = plan_packs(self.client, asks, sizes, packing.pack_family, tally)
        ready.update({i: self.finish_task(prepared[i], reply) for i, reply in cached.items()})
        return Plan(prepared, ready, groups)

    def _run_pack(
        self, plan: Plan, group: list[int], stats: BatchStats, deadline: float, fatal: list[PredictionError]
    ) -> list[dict[str, Any] | PredictionError]:
        """The outcomes of one pack's tasks (in order), asked together."""
        if fatal:
            return [fatal[0]] * len(group)
        if time.monotonic() > deadline:
            return [deadline_reached()] * len(group)
        asks = [plan.prepared[i].ask for i in group]
        replies = answer_pack(self.client, asks, packing, deadline=deadline, tally=stats.calls)
        outcomes: list[dict[str, Any] | PredictionError] = []
        for i, reply in zip(group, replies, strict=True):
            if isinstance(reply, PredictionError) and reply.fatal:
                fatal.append(reply)
            outcomes.append(reply if isinstance(reply, PredictionError) else self.finish_task(plan.prepared[i], reply))
        return outcomes

    def predict_task(
        self,
        task: dict[str, Any],
        stats: BatchStats | None = None,
        deadline: float | None = None,
        inputs: PromptInputs | None = None,
        settle: bool = True,
    ) -> dict[str, Any]:
        """The prediction for one task; raises `PredictionError`. `settle=False`: the batch settles it later.

        No request starts after `deadline`; a request already sent finishes even after
        it, so its answer reaches the cache and the next retrieve gets it for free.
        """
        prepared = self.prepare_task(task, inputs)
        ask = prepared.ask
        reply = self.client.chat(
            ask.messages,
            ask.schema,
            deadline=deadline,
            accept=ask.accept,
            tally=stats.calls if stats is not None else None,
        )
        prediction = self.finish_task(prepared, reply)
        return self._settle([prediction], stats, deadline)[0] if settle else prediction

    def prepare_task(self, task: dict[str, Any], inputs: PromptInputs | None = None) -> PreparedTask:
        """The task's texts and its one-task call; raises `PredictionError` when it has no text."""
        data = task.get("data") or {}
        texts, truncated = read_texts(self.schema, data, self.settings.max_input_chars)
        if not texts:
            raise no_text(self.schema.data_keys)
        for name in truncated:
            logger.warning(
                "任务 %s 的文本 %s 超过 %d 字符，已截断 (text truncated to MAX_INPUT_CHARS)",
                task.get("id"), name, self.settings.max_input_chars,
            )
        inputs = inputs or self.prompt_inputs()
        # With logprobs the score comes from them: no self-reported confidence to ask for and pay.
        confidence = not self.client.logprobs
        if inputs.shots is not None:
            messages = inputs.shots.messages(self.schema, texts, inputs.guidance, task.get("id"), confidence)
        else:
            messages = build_prompt(self.schema, texts, inputs.guidance, confidence=confidence)
        wanted = wanted_targets(self.schema, texts)
        logger.debug("Task %s fields: %s", task.get("id"), {k: len(v) for k, v in texts.items()})
        logger.debug("Task %s prompt:\n%s", task.get("id"), messages[-1]["content"])
        names = [t.name for t in wanted]

        def worth_caching(reply: ChatReply) -> bool:
            """Keep only a reply that gives at least one valid result; another try may do better."""
            results, _ = build_results(self.schema, parse_reply(reply.text, names), texts)
            return bool(results)

        ask = Ask(messages, answer_schema(self.schema, texts, inputs.guidance.reasoning, confidence), worth_caching)
        tokens = packing.estimate_tokens("\n".join(texts.values()))
        return PreparedTask(task, texts, wanted, ask, tokens)

    def finish_task(self, prepared: PreparedTask, reply: ChatReply) -> dict[str, Any]:
        """The prediction made of a reply: results, score, model_version."""
        task, texts, wanted = prepared.task, prepared.texts, prepared.wanted
        names = [t.name for t in wanted]
        if reply.model:
            logger.debug("Task %s answered by %s", task.get("id"), reply.model)
        if not reply.cached:  # the status page's "model that answered last"
            ACTIVITY.model_answered(reply.model or self.settings.model, reply.quota_remaining)
        logger.debug(
            "Task %s reply (%d prompt + %d completion tokens%s):\n%s",
            task.get("id"), reply.usage.prompt_tokens, reply.usage.completion_tokens,
            ", cached" if reply.cached else "", reply.text,
        )
        answers = parse_reply(reply.text, names, extras=(CONFIDENCE_KEY,))
        if reply.truncated:
            logger.warning(
                "任务 %s 的回复在 LLM_MAX_TOKENS=%s 处被截断，只保留完整的部分 (task %s: reply cut at "
                "LLM_MAX_TOKENS, its complete items kept; a small model may be looping)",
                task.get("id"), self.settings.max_tokens, task.get("id"),
            )
        results, answered = build_results(
            self.schema, answers, texts,
            lambda target, value: region_confidence(reply.tokens, value, target.name, target.control.labels or ()),
        )
        if not results:
            logger.debug("Task %s: no valid answer in reply", task.get("id"))
        # coverage x P(the list answers are complete): `settle` keeps it when it re-scores choices
        factor = (answered / len(wanted) if wanted else 0.0) * completeness(reply.tokens, answers, names)
        score = prediction_score(reply.tokens, [r["score"] for r in results if "score" in r], factor, answers)
        prediction = {"result": results, "score": score, "model_version": self.model_version}
        calibration.carry(prediction, wanted, reply.tokens, texts, factor)
        logger.debug("Task %s result: %s", task.get("id"), prediction)
        return prediction

    def failed_prediction(self, err: PredictionError) -> dict[str, Any]:
        """The item for a task that could not be predicted: no `result` key on purpose, so Label Studio stores
        nothing for this task and the next "Retrieve predictions" tries it again (an item with `result: []`
        would be stored under this model_version and the task skipped forever after)."""
        return {"model_version": self.model_version, "score": 0.0, "error": err.message}

    def _log_batch(self, stats: BatchStats, seconds: float, progress: BatchProgress) -> None:
        failed = stats.tasks - stats.succeeded
        calls = stats.calls
        tokens = int(calls.get(PROMPT_TOKENS) + calls.get(COMPLETION_TOKENS))
        requests, hits = int(calls.get(API_REQUESTS)), int(calls.get(CACHE_HITS))
        ACTIVITY.finish_batch(progress, stats.succeeded, requests, hits, tokens)
        logger.info(
            "批次完成 (batch done): %d 个任务, %d 成功, %d 失败, 缓存命中 %d/未命中 %d (cache hits/misses), "
            "API 请求 %d (requests), 重试 %d (retries), 429 × %d, 并发上限 %d (concurrency limit), "
            "tokens %d+%d, %.2f s",
            stats.tasks, stats.succeeded, failed,
            calls.get(CACHE_HITS), calls.get(CACHE_MISSES), calls.get(API_REQUESTS), calls.get(API_RETRIES),
            calls.get(API_THROTTLED), self.client.limiter.limit,
            calls.get(PROMPT_TOKENS), calls.get(COMPLETION_TOKENS), seconds,
        )
        for message, count in stats.errors.items():
            logger.warning("%s × %d", message, count)
