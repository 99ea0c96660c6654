"""Predict a batch of tasks: prompt, one chat call per task, parse, map, validate.

Label Studio sends all selected tasks in one `/predict` and keeps nothing from a
malformed reply, so this returns exactly one prediction per task, in order, and a
task that fails gets an empty prediction instead of failing its batch. Errors that
would repeat for every task (no key, bad key, quota used up …) stop further calls.
What a batch cost (cache hits, requests, retries, tokens) is logged in one line.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .labeling import calibration, extension, packing
from .labeling.parsing import parse_reply
from .labeling.prompts import CONFIDENCE_KEY, PromptGuidance, answer_schema, build_prompt, read_texts, wanted_targets
from .labeling.results import build_results
from .labeling.schema import LabelingSchema, Target
from .labeling.scoring import completeness, prediction_score, region_confidence
from .learning.retrieval import Shots
from .llm.batch_stats import BatchStats
from .llm.client import LLMClient
from .llm.errors import PredictionError, deadline_reached, no_text, unexpected_error
from .llm.packed import Ask, answer_pack, default_tasks_per_call, pack_outcomes, plan_packs
from .llm.replies import ChatReply
from .settings import Settings
from .telemetry.activity import ACTIVITY
from .telemetry.metrics import BATCHES, METRICS, TASKS, Tally

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
        # LLM_EXTEND_LISTS where it can work (`labeling.extension`); 0 once the endpoint is seen to ignore minItems
        self.extend_below = settings.extend_below if settings.extends_lists else 0.0
        self.before: dict[Any, dict[str, Any]] | None = None  # set to {}: each task's prediction before extension

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
        self, tasks: list[dict[str, Any]], guidance: PromptGuidance | None = None, project: str = "",
        stats: BatchStats | None = None,
    ) -> list[dict[str, Any]]:
        """One prediction per task, in order; never raises for a task's failure. `stats`: filled in for the caller.

        Tasks run concurrently (`LLM_CONCURRENCY`). Label Studio drops the whole reply
        after `ML_TIMEOUT_PREDICT` seconds, so tasks not finished before our deadline
        (10 s earlier) get a failed item now rather than the batch getting nothing.
        """
        started = time.monotonic()
        inputs = self.prompt_inputs(guidance)
        deadline = started + self.settings.batch_deadline
        stats = stats if stats is not None else BatchStats()
        stats.tasks = len(tasks)
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
        stats.log(time.monotonic() - started, progress, self.client.limiter.limit)
        return done

    def _settle(self, predictions: list[dict], stats: BatchStats | None, deadline: float | None) -> list[dict]:
        """Calibrated choices and scores. Content-free priors are asked once per language, at the end of the first
        batch whose replies had alternatives, with a quarter of its time left (else it keeps the raw distribution)."""
        wanted = {p[calibration.PRIVATE_KEY]["lang"] for p in predictions if calibration.PRIVATE_KEY in p}
        with self._priors_lock:
            late = deadline is not None and deadline - time.monotonic() < self.settings.batch_deadline / 4
            missing = set() if late else wanted - self._asked
            self._asked |= missing  # once, whatever comes back: a failing endpoint is not asked every batch
        if missing:
            self._ask_priors(missing, stats, deadline)
        return calibration.settle(predictions, self._priors, self.score_maps)

    def _ask_priors(self, languages: set[str], stats: BatchStats | None, deadline: float | None) -> None:
        """The content-free priors of `languages`, asked in a thread that the batch waits for only until its
        deadline: Label Studio drops a late reply whole. The calls themselves are not cut at the deadline
        (asked once, cut they would leave the project uncalibrated): priors that come later serve the next batches."""

        def answer(task: dict[str, Any]) -> dict[str, Any] | None:
            try:
                # only the choice distributions are read: a list there is not worth a second call
                return self.predict_task(task, stats, None, PromptInputs(self.guidance), False, False)
            except PredictionError:
                return None

        def ask() -> None:
            found = calibration.content_free_priors(languages, self.schema.data_keys, answer)
            with self._priors_lock:
                self._priors.update(found)

        worker = threading.Thread(target=ask, name="content-free-priors", daemon=True)
        worker.start()
        worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logger.info("校准调用未在批次时限内完成，本批用未校准的分布 (content-free calls not done by the deadline: "
                        "this batch keeps the raw distribution, the next ones are calibrated)")

    def _outcome(self, future: Future, task: dict[str, Any], stats: BatchStats) -> dict[str, Any]:
        return self._settled(_safely(task, future.result), task, stats)  # a bug costs one task, not the batch

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
            made = _safely(task, lambda task=task: self.prepare_task(task, inputs))
            if isinstance(made, PredictionError):
                ready[i] = made
            else:
                prepared[i] = made
        n = self.tasks_per_call
        budget, max_tokens = self.settings.pack_token_budget, self.settings.max_tokens

        def sizes(pending: list[int]) -> list[int]:
            if n >= 1:
                return packing.fixed_pack_sizes(len(pending), n)
            return packing.auto_pack_sizes([prepared[i].tokens for i in pending], budget, max_tokens)

        asks = {i: p.ask for i, p in prepared.items()}
        cached, groups = plan_packs(self.client, asks, sizes, packing.pack_family, tally)
        for i, reply in cached.items():
            ready[i] = _safely(tasks[i], lambda i=i, reply=reply: self.finish_task(prepared[i], reply))
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
            if not isinstance(reply, PredictionError):
                task = plan.prepared[i]
                outcomes.append(_safely(task.task, lambda task=task, reply=reply: self.finish_task(task, reply)))
                continue
            if reply.fatal:
                fatal.append(reply)
            outcomes.append(reply)
        return outcomes

    def predict_task(
        self,
        task: dict[str, Any],
        stats: BatchStats | None = None,
        deadline: float | None = None,
        inputs: PromptInputs | None = None,
        settle: bool = True,
        extend: bool = True,
    ) -> dict[str, Any]:
        """The prediction for one task; raises `PredictionError`. `settle=False`: the batch settles it later;
        `extend=False`: a list closed in doubt is not asked again (`labeling.extension`).

        No request starts after `deadline`; a request already sent finishes even after
        it, so its answer reaches the cache and the next retrieve gets it for free.
        """
        prepared = self.prepare_task(task, inputs)
        ask, tally = prepared.ask, stats.calls if stats is not None else None
        reply = self.client.chat(ask.messages, ask.schema, deadline=deadline, accept=ask.accept, tally=tally)
        prediction = self.finish_task(prepared, reply)
        if extend and self.extend_below and reply.mode in extension.ENFORCING_MODES and not reply.truncated:

            def again(schema: dict[str, Any]) -> tuple[dict[str, Any], list] | None:
                """The same prompt, its doubtful lists made to go on; None when that call fails or is not enforced."""
                logger.debug("Task %s: lists closed in doubt asked to go on: %s", task.get("id"),
                             {k: v["minItems"] for k, v in schema["properties"].items() if "minItems" in v})
                try:
                    more = self.client.chat(ask.messages, schema, deadline=deadline, accept=ask.accept, tally=tally)
                except PredictionError as err:
                    logger.info("任务 %s 补充请求失败，保留原答案 (extension call failed): %s", task.get("id"), err)
                    return None
                if more.truncated:  # made to go on, it looped to LLM_MAX_TOKENS: nothing to trust in it
                    return None
                if not extension.enforced(schema, more.text):
                    self.extend_below = 0.0  # this endpoint ignores minItems: every further extension would be wasted
                    logger.warning("端点未执行 minItems，不再补充列表 (endpoint ignored minItems: lists not extended)")
                    return None
                return self.finish_task(prepared, more), more.tokens

            names, below = [t.name for t in prepared.wanted], self.extend_below
            grown = extension.extend(prediction, (reply.text, reply.tokens), ask.schema, names, again, below)
            if grown is not prediction and self.before is not None:  # the few-shot evaluation judges both
                self.before[task.get("id")] = self._settle([copy.deepcopy(prediction)], stats, deadline)[0]
            prediction = grown
        return self._settle([prediction], stats, deadline)[0] if settle else prediction

    def prepare_task(self, task: dict[str, Any], inputs: PromptInputs | None = None) -> PreparedTask:
        """The task's texts and its one-task call; raises `PredictionError` when it has no text."""
        data = task.get("data") or {}
        if not isinstance(data, dict):  # Label Studio's task data is an object; anything else holds no field
            raise no_text(self.schema.data_keys)
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


def _safely(task: dict[str, Any], make: Callable[[], T]) -> T | PredictionError:
    """`make()` for one task; its failure, even a bug, is that task's error and never its pack's or batch's."""
    try:
        return make()
    except PredictionError as err:
        return err
    except Exception:  # noqa: BLE001 - logged with its traceback; the task gets "internal error"
        logger.exception("Task %s: unexpected error", task.get("id") if isinstance(task, dict) else None)
        return unexpected_error()
