"""The review score without token logprobs: second opinions on a task's single choices (`LLM_SCORE`).

A step between reading a task's answer and calibrating its batch. For each answered single-choice control
it asks up to `LLM_SCORE_CALLS` extra calls of the task's own prompt and scores the answer by how many agree:
- `agreement`: the pool's current model again, at `SAMPLE_TEMPERATURE` (self-consistency);
- `models`: the other models of the pool, each spending its own daily cap (only models with spare quota);
- `verbal`: the model's probability for every option, the answer's share of them (averaged over the calls);
- `orders`: one call of the task's prompt with the label list reversed (a small model favours one end of the
  list); where the two answers differ, `answer_shares` keeps the label less over-represented among the answers.
The first answer votes with its self-reported confidence, which orders tasks with equal agreement.
Other controls keep their score. When no spare quota is left, scoring is degraded to `off` (said once);
the pre-label itself never waits on a score.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..labeling.answers import TaskAnswer, read_answer
from ..labeling.controls.choices import is_single_choice
from ..labeling.parsing import parse_reply
from ..labeling.prompts import labels_reversed
from ..labeling.schema import Target
from ..llm.client import LLMClient
from ..llm.errors import ErrorKind, PredictionError
from ..llm.pool import pool_models
from ..llm.quota import Quota
from ..llm.replies import ChatReply
from ..settings import Settings
from ..telemetry.metrics import Tally
from .prepare import PreparedTask, prepared_under
from .score_activity import SCORE_ACTIVITY

logger = logging.getLogger(__name__)

SAMPLE_TEMPERATURE = 0.7  # enough spread for a doubtful answer to change, the usual self-consistency value
EXTRA_CALL_METHODS = ("agreement", "models", "verbal", "orders")
UNREADABLE_LIMIT = 10  # second opinions in a row that could not be read before the method is given up
SPARE_RESERVE = 20  # calls of a model's day (when known) a second opinion leaves for pre-labels
_OUT_OF_QUOTA = (ErrorKind.QUOTA, ErrorKind.MODEL_UNAVAILABLE)


def single_choices(wanted: Sequence[Target]) -> list[Target]:
    """The single-choice controls among `wanted`: the ones second opinions score."""
    return [t for t in wanted if is_single_choice(t)]


def chosen(answer: TaskAnswer, names: set[str]) -> dict[str, str]:
    """The label the answer chose for each of the single-choice controls `names`."""
    out: dict[str, str] = {}
    for region in answer.regions:
        name = region.get("from_name")
        labels = (region.get("value") or {}).get("choices") or []
        if name in names and len(labels) == 1:
            out[str(name)] = str(labels[0])
    return out


def extra_calls(settings: Settings, logprobs: bool, schema_targets: Sequence[Target]) -> int:
    """Extra calls per task the configured score method makes for a config (the dry run counts them)."""
    method = settings.resolved_score_method(logprobs)
    if method not in EXTRA_CALL_METHODS or not single_choices(schema_targets):
        return 0
    if method == "models":  # one call per other pool model, at most
        return min(settings.score_calls, len(pool_models(settings)) - 1)
    if method == "orders":  # one other order: the list reversed
        return min(settings.score_calls, 1)
    return settings.score_calls


@dataclass(frozen=True)
class Opinion:
    """One extra call's view: for each control, its label (agreement, models) or P(option) (verbal)."""

    labels: dict[str, str]
    probabilities: dict[str, dict[str, float]]
    answer: TaskAnswer | None = None  # `orders`: the whole answer in the other order (it may stand in for none)


class SecondOpinions:
    """Rescores one task's single choices with extra calls of its prompt; shared by a predictor's threads."""

    def __init__(self, client: LLMClient, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self._degraded_day: str | None = None  # the quota day scoring was found to have no spare quota
        self._read = Counter[bool]()  # second opinions readable (True) or not, until one is
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        """The method in force now: `off` while degraded for want of quota."""
        method = self.settings.resolved_score_method(self.client.logprobs)
        if method in EXTRA_CALL_METHODS and not self._read[True] and self._read[False] >= UNREADABLE_LIMIT:
            return "off"
        if method in EXTRA_CALL_METHODS and self._degraded_day is not None:
            if self._degraded_day == self.client.pool.ledger.clock.day():
                return "off"
            self._degraded_day = None
            SCORE_ACTIVITY.restore()
        return method

    @property
    def asks_extra_calls(self) -> bool:
        return self.method in EXTRA_CALL_METHODS and self.settings.score_calls > 0

    def rescore(
        self, task: PreparedTask, answer: TaskAnswer, deadline: float | None, tally: Tally | None
    ) -> TaskAnswer:
        """`answer` with its single choices scored by second opinions (unchanged when none apply)."""
        method = self.method
        calls = self.settings.score_calls
        names = {t.name for t in single_choices(task.wanted)}
        picked = chosen(answer, names)
        # `orders` also asks for a task whose reply named no label: the other order may name one
        unanswered = method == "orders" and not answer.answered and bool(names)
        if method not in EXTRA_CALL_METHODS or not calls or not (picked or unanswered):
            return answer
        opinions = self._ask(method, calls, task, deadline, tally)
        if unanswered:
            found = next((o.answer for o in opinions if o.answer is not None and o.answer.answered), None)
            # no agreement to show for it: half its own score, as an answer the other order disagreed with
            return answer if found is None else found.with_regions(found.regions, round(found.score / 2, 4),
                                                                   found.coverage)
        if not opinions:
            return answer
        return self._scored(answer, picked, opinions, method)

    def _ask(self, method: str, calls: int, task: PreparedTask, deadline: float | None,
             tally: Tally | None) -> list[Opinion]:
        names = [t.name for t in single_choices(task.wanted)]
        if method == "models":
            models = self._spare_models(calls)
            if not models:
                self._degrade("没有其他有剩余额度的模型 (no other pool model has spare quota today)")
                return []
            asks = [dict(model=m) for m in models]
        elif method == "agreement":
            asks = [dict(temperature=SAMPLE_TEMPERATURE, sample=i) for i in range(1, calls + 1)]
        elif method == "orders":
            asks = [{}]  # the reversed list is another prompt, so another cache entry: no sample number needed
        else:
            asks = [dict(temperature=self.settings.temperature if i == 1 else SAMPLE_TEMPERATURE, sample=i)
                    for i in range(1, calls + 1)]
        opinions: list[Opinion] = []
        for overrides in asks:
            try:
                opinion = self._opinion(method, task, names, deadline, tally, overrides)
            except PredictionError as err:
                if err.kind in _OUT_OF_QUOTA:
                    if method != "models":  # another model may still have spare quota for the next task
                        self._degrade("额度不足，评分改为 off (no spare quota: LLM_SCORE degraded to off)")
                    return opinions
                if err.fatal or err.kind == ErrorKind.DEADLINE:
                    return opinions
                logger.debug("Task %s: a score call failed: %s", task.task.get("id"), err)
                continue
            self._count_read(bool(opinion.labels or opinion.probabilities), method)
            opinions.append(opinion)
        return opinions

    def _count_read(self, readable: bool, method: str) -> None:
        """Count a readable or unreadable second opinion; a model none of whose first ones could be read is not
        asked any more (every further call would be spent for nothing)."""
        with self._lock:
            self._read[readable] += 1
            stop = not self._read[True] and self._read[False] == UNREADABLE_LIMIT
        if stop:
            reason = (f"前 {UNREADABLE_LIMIT} 个 {method} 评分回复都无法读取，评分改为 off (none of the first "
                      f"{UNREADABLE_LIMIT} {method} replies could be read: LLM_SCORE degraded to off)")
            if SCORE_ACTIVITY.degrade(reason):
                logger.warning("评分降级 (review score degraded): %s; 预标注照常 (pre-labels go on)", reason)

    def _opinion(self, method: str, task: PreparedTask, names: list[str], deadline: float | None,
                 tally: Tally | None, overrides: dict[str, Any]) -> Opinion:
        if method == "orders":
            reordered = prepared_under(task, labels_reversed(task.schema, names))
            messages, schema = reordered.ask.messages, reordered.ask.schema
            reader = _Reader(lambda reply: _order_opinion(reordered.read(reply), names))
            accept: Callable[[ChatReply], bool] = lambda reply: bool(reader.read(reply).labels)  # noqa: E731
        elif method == "verbal":
            messages, schema = verbal_ask(task, names)
            reader = _Reader(lambda reply: Opinion({}, verbal_probabilities(reply.text, task, names)))
            accept = lambda reply: bool(reader.read(reply).probabilities)  # noqa: E731
        else:
            messages, schema = task.ask.messages, task.ask.schema
            reader = _Reader(lambda reply: Opinion(chosen(read_answer(
                task.schema, task.texts, task.wanted, reply.text, reply.tokens), set(names)), {}))
            accept = lambda reply: bool(reader.read(reply).labels)  # noqa: E731
        reply = self.client.chat(messages, schema, deadline=deadline, accept=accept, tally=tally, **overrides)
        if not reply.cached:
            SCORE_ACTIVITY.called(method, reply.model or overrides.get("model") or "-")
        return reader.read(reply)

    def _spare_models(self, calls: int) -> list[str]:
        """Up to `calls` pool models other than the one answering now, each with quota to spare today."""
        usable = self.client.pool.usable()
        if not usable:
            return []
        today = self.client.pool.ledger.today()
        spare = [m for m in usable[1:] if _has_spare(today.get(m, Quota(m)))]
        return spare[:calls]

    def _degrade(self, reason: str) -> None:
        self._degraded_day = self.client.pool.ledger.clock.day()
        if SCORE_ACTIVITY.degrade(reason):
            logger.warning("评分降级 (review score degraded): %s; 预标注照常 (pre-labels go on)", reason)

    def _scored(self, answer: TaskAnswer, picked: dict[str, str], opinions: list[Opinion], method: str) -> TaskAnswer:
        """The agreement (or verbal share) of each picked control as its region score, and the task score."""
        own = answer.score / answer.coverage if answer.coverage else 0.0  # the self-reported confidence
        shares: dict[str, float] = {}
        labels = dict(picked)
        for name, label in picked.items():
            if method == "verbal":
                found = [o.probabilities[name].get(label, 0.0) for o in opinions if name in o.probabilities]
                if found:
                    shares[name] = sum(found) / len(found)
                continue
            votes = [o.labels[name] for o in opinions if name in o.labels]
            if not votes:
                continue
            if self.settings.score_majority:
                top, count = Counter([label, *votes]).most_common(1)[0]
                if top != label and count > 1 + votes.count(label):
                    labels[name] = top
                    shares[name] = count / (len(votes) + 1)
                    continue
            shares[name] = (votes.count(label) + own) / (len(votes) + 1)
        if not shares:
            return answer
        # `orders`: the other order's labels, for `answer_shares` to settle a disagreement with the batch's counts
        alternatives = {name: tuple(o.labels[name] for o in opinions if name in o.labels)
                        for name in shares} if method == "orders" else {}
        regions = []
        for region in answer.regions:
            name = region.get("from_name")
            if name in shares:
                region = {**region, "value": {**region["value"], "choices": [labels[name]]},
                          "score": round(shares[name], 4)}
            regions.append(region)
        mean = sum(shares.values()) / len(shares)
        whole = all(r.get("from_name") in shares for r in answer.regions)
        score = mean * answer.coverage if whole else answer.score * mean
        choices = {k: v for k, v in answer.choices.items() if k not in shares}  # not re-decided from logprobs
        return replace(answer.with_regions(regions, round(score, 4), answer.coverage), choices=choices,
                       alternatives=alternatives)


def _order_opinion(answer: TaskAnswer, names: list[str]) -> Opinion:
    return Opinion(chosen(answer, set(names)), {}, answer)


def _has_spare(quota: Quota) -> bool:
    """A model's quota has room for a second opinion: not out, and not down to its last calls (pre-labels')."""
    return not quota.exhausted and (quota.remaining is None or quota.remaining > SPARE_RESERVE)


class _Reader:
    """One reply read once: the cache's `accept` and the caller share the read."""

    def __init__(self, read: Callable[[ChatReply], Opinion]) -> None:
        self._read = read
        self._last: tuple[ChatReply, Opinion] | None = None

    def read(self, reply: ChatReply) -> Opinion:
        if self._last is None or self._last[0] is not reply:
            self._last = (reply, self._read(reply))
        return self._last[1]


VERBAL_KEY_EN = ("For each allowed value, how likely is it the right answer? Reply with JSON only: for each "
                 "control, an object giving every allowed value a probability from 0 to 1 (they sum to 1).")
VERBAL_KEY_ZH = ("对每个可选值，给出它是正确答案的概率。只回复 JSON：每个控件一个对象，"
                 "为每个可选值给出 0 到 1 的概率（总和为 1）。")


def verbal_ask(task: PreparedTask, names: list[str]) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The task's prompt, asked for a probability of every option of its single choices instead of one answer."""
    targets = {t.name: t for t in single_choices(task.wanted)}
    properties = {
        name: {"type": "object", "properties": {label: {"type": "number"} for label in targets[name].control.labels},
               "required": list(targets[name].control.labels)}
        for name in names
    }
    schema = {"type": "object", "properties": properties, "required": names}
    last = task.ask.messages[-1]
    note = VERBAL_KEY_ZH if task.ask.messages and _chinese(str(last.get("content") or "")) else VERBAL_KEY_EN
    messages = [*task.ask.messages[:-1], {**last, "content": f"{last.get('content') or ''}\n\n{note}"}]
    return messages, schema


def _chinese(text: str) -> bool:
    return sum("\u4e00" <= c <= "\u9fff" for c in text) * 4 > len(text)


def verbal_probabilities(text: str, task: PreparedTask, names: list[str]) -> dict[str, dict[str, float]]:
    """P(option) per control from a verbal reply, normalised; controls without usable numbers left out."""
    targets = {t.name: t for t in single_choices(task.wanted)}
    parsed = parse_reply(text, names)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        value = parsed.get(name)
        if not isinstance(value, dict):
            continue
        allowed = {label.casefold(): label for label in targets[name].control.labels}
        numbers: dict[str, float] = {}
        for key, p in value.items():
            label = allowed.get(str(key).strip().casefold())
            try:
                number = float(p)
            except (TypeError, ValueError):
                continue
            if label is not None and 0 <= number <= 100:
                numbers[label] = number
        total = sum(numbers.values())
        if total > 0:
            out[name] = {label: number / total for label, number in numbers.items()}
    return out
