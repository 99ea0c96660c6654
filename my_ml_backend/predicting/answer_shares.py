"""The review score without logprobs, weighed by how over-represented each single choice is (no extra call).

Without token logprobs a small model's collapse onto one label cannot be divided out of a distribution
(`labeling.calibration`), but it shows in the answers themselves: a label answered far more often than the
project's labels occur is wrong more often. For a label c, precision(c) = recall(c) · π(c) / q(c) ≤ π(c) / q(c),
where π is the share of c among the gold labels and q its share among the answers. So each answer's score is
multiplied by that bound, q counted over the distinct tasks this predictor has answered (the batch included,
so the first batch is weighed too) and smoothed towards π, π taken uniform (the project's label shares are not
known before it is annotated; the project's fitted score map corrects what uniform gets wrong).

Only controls answered without a choice distribution are weighed: with logprobs, calibration has already
removed the bias and the score is a probability. Where a second opinion answered with the label list in another
order (`LLM_SCORE=orders`), both answers are counted, and where they differ the label with the higher bound (the
less over-represented one) is kept: of two answers pulled by the list's two ends, the one the collapse explains less.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

from ..labeling.answers import TaskAnswer

PRIOR_ANSWERS = 20  # pseudo-answers spread evenly over the labels: one answer lowers its label by under 20 %
REMEMBERED_TASKS = 20_000  # distinct tasks whose answers are counted (the oldest are forgotten first)


def share_bound(count: int, total: int, labels: int, prior_answers: float = PRIOR_ANSWERS) -> float:
    """The upper bound π/q on the precision of a label answered `count` times out of `total`, π = 1/`labels`."""
    if labels < 2:
        return 1.0
    prior = 1.0 / labels
    share = (count + prior_answers * prior) / (total + prior_answers)
    return min(1.0, prior / share)


def task_key(task: dict[str, Any]) -> str:
    """A task's identity for counting its answer once: its id, else its data."""
    if task.get("id") is not None:
        return f"id:{task['id']}"
    data = json.dumps(task.get("data"), sort_keys=True, ensure_ascii=False, default=str)
    return "data:" + hashlib.sha256(data.encode()).hexdigest()


class AnswerShares:
    """The single-choice answers of one predictor's distinct tasks, per control; shared by its threads."""

    def __init__(self, prior_answers: float = PRIOR_ANSWERS, remembered: int = REMEMBERED_TASKS) -> None:
        self.prior_answers, self.remembered = prior_answers, remembered
        self._answers: OrderedDict[str, dict[str, tuple[str, ...]]] = OrderedDict()  # task key -> control -> labels
        self._counts: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()

    def weigh_batch(
        self, answered: Sequence[tuple[dict[str, Any], TaskAnswer]], labels: dict[str, int]
    ) -> list[TaskAnswer]:
        """Each answer with its score weighed by its labels' share bounds, after the batch's answers are counted."""
        picked = [(task_key(task), _without_distribution(answer, labels)) for task, answer in answered]
        with self._lock:
            for key, chosen in picked:
                self._record(key, chosen)
            settled = [{name: self._best(name, said, labels[name]) for name, said in chosen.items()}
                       for _, chosen in picked]
        return [_weighed(answer, found) for (_, answer), found in zip(answered, settled, strict=True)]

    def _best(self, control: str, said: tuple[str, ...], labels: int) -> tuple[str, float]:
        """Of the labels said for a control (the answer first), the one with the highest bound (ties: the answer)."""
        counts = self._counts[control]
        total = sum(counts.values())
        bounds = [(share_bound(counts[label], total, labels, self.prior_answers), -i, label)
                  for i, label in enumerate(said)]
        bound, _, label = max(bounds)
        return label, bound

    def counts(self, control: str) -> dict[str, int]:
        with self._lock:
            return dict(self._counts.get(control, {}))

    def _record(self, key: str, chosen: dict[str, tuple[str, ...]]) -> None:
        old = self._answers.pop(key, None)
        if old:
            self._forget(old)
        if not chosen:
            return
        self._answers[key] = chosen
        for name, said in chosen.items():
            self._counts.setdefault(name, Counter()).update(said)
        while len(self._answers) > self.remembered:
            self._forget(self._answers.popitem(last=False)[1])

    def _forget(self, chosen: dict[str, tuple[str, ...]]) -> None:
        for name, said in chosen.items():
            for label in said:
                self._counts[name][label] -= 1
                if self._counts[name][label] <= 0:
                    del self._counts[name][label]


def _without_distribution(answer: TaskAnswer, labels: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """For each single-choice control the answer has no choice distribution for: its label, then the labels of
    the answers in another order."""
    out: dict[str, tuple[str, ...]] = {}
    for region in answer.regions:
        name = str(region.get("from_name"))
        chosen = (region.get("value") or {}).get("choices") or []
        if name in labels and name not in answer.choices and len(chosen) == 1:
            out[name] = (str(chosen[0]), *answer.alternatives.get(name, ()))
    return out


def _weighed(answer: TaskAnswer, settled: dict[str, tuple[str, float]]) -> TaskAnswer:
    """`answer` with its weighed controls' labels settled, their region scores and its task score multiplied by
    their bounds."""
    if not settled:
        return answer
    regions = []
    for region in answer.regions:
        name = str(region.get("from_name"))
        if name in settled:
            label, bound = settled[name]
            region = {**region, "value": {**region["value"], "choices": [label]}}
            if isinstance(region.get("score"), (int, float)):
                region["score"] = round(region["score"] * bound, 4)
        regions.append(region)
    factor = sum(bound for _, bound in settled.values()) / len(settled)
    return answer.with_regions(regions, round(answer.score * factor, 4), answer.coverage)
