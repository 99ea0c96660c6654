"""Predict a batch: prepare → ask (one strategy for single and packed calls) → read → retry an answer naming no
choice the plain way → second opinions → calibrate → build items.

Label Studio sends all selected tasks in one `/predict` and keeps nothing from a malformed reply, so a
batch returns exactly one item per task, in order; a task that fails gets an item without a result instead
of failing its batch. Errors that would repeat for every task (no key, quota used up …) stop further calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from ..labeling.answers import TaskAnswer
from ..labeling.calibration import ScoreMaps
from ..labeling.prompts import PromptGuidance
from ..labeling.schema import LabelingSchema
from ..learning.retrieval import ExampleSource
from ..llm.batch_stats import BatchStats
from ..llm.client import LLMClient
from ..llm.errors import PredictionError, deadline_reached
from ..settings import Settings
from ..telemetry.activity import ACTIVITY
from ..telemetry.metrics import BATCHES, METRICS, TASKS, Tally
from .answer_shares import AnswerShares
from .calibrate import BatchCalibration
from .items import failed_item, prediction_item, withheld_item
from .plain_retry import PlainRetry
from .prepare import PreparedTask, PromptInputs, prepare_task
from .score_activity import SCORE_ACTIVITY
from .second_opinions import SecondOpinions, single_choices
from .strategies import AskStrategy, Outcome, PackedCalls, SingleCalls, group_outcomes, safely

logger = logging.getLogger(__name__)


def tasks_per_call(settings: Settings) -> int:
    """1: one call per task; N: packs of N; 0: packs sized by tokens (LLM_TASKS_PER_CALL, else the endpoint's)."""
    if settings.answers_free_text:  # a plain answer names no task: one task per call
        return 1
    n = settings.tasks_per_call
    return settings.endpoint.tasks_per_call if n is None else n


@dataclass(frozen=True)
class BatchOptions:
    """How one batch is asked: guidance (the request's own, else the project's), the status page's project,
    the stats to fill, and the seconds it may take (`...`: the settings' `batch_deadline`; None: no limit)."""

    guidance: PromptGuidance | None = None
    project: str = ""
    stats: BatchStats | None = None
    deadline: float | None | EllipsisType = ...


@dataclass
class BatchPlan:
    """A batch before any call: its prepared tasks, the outcomes known already, the groups to ask."""

    prepared: dict[int, PreparedTask]
    ready: dict[int, Outcome]
    groups: list[list[int]]


class Predictor:
    """Predicts tasks of one labeling config with one LLM client, under one `model_version`."""

    def __init__(
        self,
        schema: LabelingSchema,
        settings: Settings,
        client: LLMClient,
        model_version: str,
        guidance: PromptGuidance | None = None,
        examples: ExampleSource | None = None,
        score_maps: ScoreMaps | None = None,
    ) -> None:
        self.schema, self.settings, self.client = schema, settings, client
        self.model_version = model_version
        self.guidance = guidance or PromptGuidance()
        self.examples = examples  # the project's annotated examples and their form, read once per batch
        self.tasks_per_call = tasks_per_call(settings)
        extend_below = settings.extend_below if settings.extends_lists else 0.0
        self.single = SingleCalls(client, settings.max_tokens, extend_below)
        self.strategy: AskStrategy = self.single if self.tasks_per_call == 1 else PackedCalls(
            client, settings.max_tokens, self.tasks_per_call, settings.pack_token_budget)
        self.plain_retry = PlainRetry(self.single, settings.retries_plain)  # a JSON answer naming no choice
        self.opinions = SecondOpinions(client, settings)  # LLM_SCORE's extra calls, between reading and calibrating
        # LLM_SCORE_SHARES: scores without logprobs weighed by their label's share of the answers; decided per batch
        # on the client's `logprobs`, which turns off when the endpoint refuses them
        self.shares = AnswerShares() if settings.weighs_shares(logprobs=False) else None
        self.share_labels = {t.name: len(t.control.labels or ()) for t in single_choices(schema.targets)}
        self.score_maps = score_maps  # the project's (`learning.scorefit`)
        self.calibration = BatchCalibration(schema.data_keys, self._content_free_answer, score_maps)

    def prompt_inputs(self, guidance: PromptGuidance | None = None) -> PromptInputs:
        """Guidance (the request's own, else the project's) and the examples the batch may show."""
        examples = None
        if self.examples is not None:
            try:
                examples = self.examples.for_batch()
            except Exception as exc:  # noqa: BLE001 - without examples the task is still predicted
                logger.warning("读取标注示例失败，本批不使用示例 (cannot read examples): %s", exc)
        return PromptInputs(guidance or self.guidance, examples)

    def prepare(self, task: dict[str, Any], inputs: PromptInputs) -> PreparedTask:
        # With logprobs the score comes from them: no self-reported confidence to ask for and pay.
        return prepare_task(self.schema, task, inputs, self.settings.max_input_chars, not self.client.logprobs,
                            self.settings.answers_free_text)

    def plan(
        self, tasks: list[dict[str, Any]], inputs: PromptInputs | None = None, tally: Tally | None = None
    ) -> BatchPlan:
        """Every task prepared, what is known without a call (no text, the cache), and the groups to ask."""
        inputs = inputs or self.prompt_inputs()
        prepared: dict[int, PreparedTask] = {}
        failed: dict[int, Outcome] = {}
        for i, task in enumerate(tasks):
            made = safely(task.get("id") if isinstance(task, dict) else None, lambda t=task: self.prepare(t, inputs))
            if isinstance(made, PredictionError):
                failed[i] = made
            else:
                prepared[i] = made
        ready, groups = self.strategy.plan(prepared, tally)
        return BatchPlan(prepared, {**failed, **ready}, groups)

    def predict_batch(
        self,
        tasks: list[dict[str, Any]],
        guidance: PromptGuidance | None = None,
        project: str = "",
        stats: BatchStats | None = None,
        deadline: float | None | EllipsisType = ...,
    ) -> list[dict[str, Any]]:
        """One Label Studio prediction item per task, in order; never raises for a task's failure.

        `deadline`: seconds this batch may take (`...`: the settings' `batch_deadline`, what Label Studio
        allows `/predict` less a margin; None: no limit). Tasks not finished by then get a failed item.
        """
        answers = self.answer_batch(tasks, BatchOptions(guidance, project, stats, deadline))
        return [self._item(task, answer, project) for task, answer in zip(tasks, answers, strict=True)]

    def _item(self, task: dict[str, Any], answer: Outcome, project: str) -> dict[str, Any]:
        """The task's Label Studio item: failed, withheld (score under LLM_MIN_SCORE) or the pre-label."""
        if isinstance(answer, PredictionError):
            return failed_item(answer, self.model_version)
        minimum = self.settings.min_score
        if minimum and answer.answered and answer.score < minimum:
            task_id = task.get("id") if isinstance(task, dict) else None
            logger.info("任务 %s 评分 %.3f 低于 LLM_MIN_SCORE=%.3f，不预标注 (task %s: score %.3f under the minimum "
                        "%.3f: left without a pre-label)", task_id, answer.score, minimum, task_id, answer.score,
                        minimum)
            SCORE_ACTIVITY.withheld(project)
            return withheld_item(answer, self.model_version)
        return prediction_item(answer, self.model_version)

    def answer_batch(self, tasks: list[dict[str, Any]], options: BatchOptions | None = None) -> list[Outcome]:
        """One calibrated answer (or the error that stopped it) per task, in order."""
        started = time.monotonic()
        options = options or BatchOptions()
        guidance, project, stats = options.guidance, options.project, options.stats  # stats: not copied, filled
        seconds = self.settings.batch_deadline if options.deadline is ... else options.deadline
        ends = None if seconds is None else started + seconds
        inputs = self.prompt_inputs(guidance)
        stats = stats if stats is not None else BatchStats()
        stats.tasks = len(tasks)
        METRICS.inc(BATCHES)
        METRICS.inc(TASKS, len(tasks))
        ACTIVITY.configure(self.settings)
        progress = ACTIVITY.start_batch(project, len(tasks), seconds or 0.0)  # the status page's row
        fatal: list[PredictionError] = []  # the first error that would repeat for every task

        def run(group: list[int]) -> list[Outcome]:
            if fatal:
                return [fatal[0]] * len(group)
            if ends is not None and time.monotonic() > ends:
                return [deadline_reached()] * len(group)
            outcomes = self.strategy.run(prepared, group, ends, stats.calls)
            fatal.extend(o for o in outcomes if isinstance(o, PredictionError) and o.fatal)
            return outcomes

        outcomes: list[Outcome | None] = [None] * len(tasks)
        plan = self.plan(tasks, inputs, stats.calls)
        prepared, groups = plan.prepared, plan.groups
        for i, outcome in plan.ready.items():
            outcomes[i] = outcome
            self._count(outcome, tasks[i], stats)
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.settings.concurrency, len(groups) or 1)),
                                  thread_name_prefix="predict")
        futures = {pool.submit(run, group): group for group in groups}
        try:
            for future in as_completed(futures, timeout=None if ends is None else max(0.0, ends - time.monotonic())):
                group = futures[future]
                for i, outcome in zip(group, group_outcomes(future, len(group)), strict=True):
                    outcomes[i] = outcome
                    self._count(outcome, tasks[i], stats)
                    ACTIVITY.task_done(progress, not isinstance(outcome, PredictionError))
        except TimeoutError:
            logger.warning("批次接近时限，未完成的任务返回空预测 (batch deadline reached)")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                outcomes[i] = err = deadline_reached()
                stats.count_error(err)
        firsts = [o for o in outcomes if o is not None]  # every task's first answer or error
        retried = self._follow_up(prepared, firsts, ends, self.plain_retry.applies, self._retry_plain, stats.calls)
        scored = self._rescore_batch(prepared, retried, ends, stats.calls)
        done = self._calibrate_outcomes(self._weigh_shares(tasks, scored), ends, seconds)
        stats.log(time.monotonic() - started, progress, self.client.limiter.limit)
        return done

    def answer_task(self, task: dict[str, Any], inputs: PromptInputs, tally: Tally | None = None) -> TaskAnswer:
        """One task's calibrated answer, with no deadline (the few-shot evaluation); raises `PredictionError`."""
        prepared = self.prepare(task, inputs)
        first = self._retry_plain(prepared, self.single.answer(prepared, None, tally), None, tally)
        answer = self._second_opinions(prepared, first, None, tally)
        assert isinstance(answer, TaskAnswer)  # `single.answer` raises instead of returning an error
        weighed = self._weigh_shares([task], [answer])[0]
        assert isinstance(weighed, TaskAnswer)  # a TaskAnswer in gives a TaskAnswer out
        return self.calibration.calibrate_batch([weighed], None, self.settings.batch_deadline)[0]

    def _weigh_shares(self, tasks: list[dict[str, Any]], outcomes: list[Outcome]) -> list[Outcome]:
        """The answers' scores weighed by their labels' share bounds (`answer_shares`), errors as they are."""
        if self.shares is None or not self.share_labels or self.client.logprobs:
            return outcomes
        answered = [(i, task, o) for i, (task, o) in enumerate(zip(tasks, outcomes, strict=True))
                    if isinstance(o, TaskAnswer) and isinstance(task, dict)]
        weighed = self.shares.weigh_batch([(task, o) for _, task, o in answered], self.share_labels)
        out = list(outcomes)
        for (i, _, _), answer in zip(answered, weighed, strict=True):
            out[i] = answer
        return out

    def _rescore_batch(
        self, prepared: dict[int, PreparedTask], outcomes: list[Outcome], ends: float | None, tally: Tally | None
    ) -> list[Outcome]:
        """The batch's answers rescored by LLM_SCORE, after every answer is in."""
        if not self.opinions.asks_extra_calls:
            return outcomes
        return self._follow_up(prepared, outcomes, ends, lambda _task, o: isinstance(o, TaskAnswer),
                               self._second_opinions, tally)

    def _follow_up(
        self,
        prepared: dict[int, PreparedTask],
        outcomes: list[Outcome],
        ends: float | None,
        applies: Callable[[PreparedTask, Outcome], bool],
        step: Callable[[PreparedTask, Outcome, float | None, Tally | None], Outcome],
        tally: Tally | None,
    ) -> list[Outcome]:
        """`step` for every outcome it `applies` to, concurrently: an extra call not back by the deadline leaves
        its task's outcome as it was (the call still lands in the cache for the next retrieve)."""
        asked = {i: o for i, o in enumerate(outcomes) if i in prepared and applies(prepared[i], o)}
        if not asked:
            return outcomes
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.settings.concurrency, len(asked))),
                                  thread_name_prefix="follow-up")
        futures = {pool.submit(step, prepared[i], o, ends, tally): i for i, o in asked.items()}
        done = list(outcomes)
        try:
            for future in as_completed(futures, timeout=None if ends is None else max(0.0, ends - time.monotonic())):
                done[futures[future]] = future.result()
        except TimeoutError:
            logger.info("额外调用未在批次时限内完成，部分任务保留第一次的答案 (extra calls not done by the deadline: "
                        "those tasks keep their first answer and score)")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return done

    def _retry_plain(
        self, task: PreparedTask, outcome: Outcome, deadline: float | None, tally: Tally | None
    ) -> Outcome:
        """The plain answer for a JSON answer that named no choice; a failure there keeps the answer as it was."""
        try:
            return self.plain_retry.answer(task, outcome, deadline, tally)
        except Exception:  # noqa: BLE001 - a bug in the retry costs its task's retry, not the batch
            logger.exception("Task %s: the plain retry failed", task.task.get("id"))
            return outcome

    def _second_opinions(
        self, task: PreparedTask | None, outcome: Outcome, deadline: float | None, tally: Tally | None
    ) -> Outcome:
        """The answer rescored by LLM_SCORE's extra calls; a failure there keeps the answer as it was."""
        if task is None or not isinstance(outcome, TaskAnswer):
            return outcome
        try:
            return self.opinions.rescore(task, outcome, deadline, tally)
        except Exception:  # noqa: BLE001 - the pre-label never waits on its score
            logger.exception("Task %s: second opinions failed; its score is kept", task.task.get("id"))
            return outcome

    def _content_free_answer(self, task: dict[str, Any]) -> TaskAnswer | None:
        """An uncalibrated answer for a content-free text (calibration's priors); lists are not asked to go on."""
        try:
            return self.single.answer(self.prepare(task, PromptInputs(self.guidance)), None, None, extend=False)
        except PredictionError:
            return None

    def _calibrate_outcomes(self, outcomes: list[Outcome], ends: float | None, seconds: float | None) -> list[Outcome]:
        answers = [o for o in outcomes if isinstance(o, TaskAnswer)]
        calibrated = iter(self.calibration.calibrate_batch(answers, ends, seconds or self.settings.batch_deadline))
        return [next(calibrated) if isinstance(o, TaskAnswer) else o for o in outcomes]

    @staticmethod
    def _count(outcome: Outcome, task: dict[str, Any], stats: BatchStats) -> None:
        if isinstance(outcome, PredictionError):
            stats.count_error(outcome)
            logger.debug("Task %s failed: %s", task.get("id") if isinstance(task, dict) else None, outcome)
        else:
            stats.count_success()
