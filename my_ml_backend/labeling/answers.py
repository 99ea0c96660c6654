"""One reply read once into a typed per-task answer: the pure parser of the labeling layer.

`read_answer` takes the reply's text and token logprobs and returns a `TaskAnswer`: the
valid Label Studio regions, their scores, the task score, and what batch calibration needs
(choice distributions, prompt language, coverage). Nothing here calls the LLM or keeps state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .controls.base import ordered
from .controls.choices import is_single_choice
from .parsing import parse_reply
from .prompts import CONFIDENCE_KEY, prompt_language
from .results import build_results
from .schema import LabelingSchema, Target
from .scoring import Tokens, completeness, path_distribution, prediction_score, region_confidence, value_start

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoiceDistribution:
    """P(each allowed choice) of one single-choice control, read from the token alternatives."""

    allowed: tuple[str, ...]
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class TaskAnswer:
    """What one reply says about one task, before the batch is calibrated and the Label Studio item is built.

    `regions`: Label Studio result items, each validated against the config; `coverage`: the share of
    asked controls answered times P(the list answers are complete), what a re-scored mean is multiplied by.
    """

    regions: list[dict[str, Any]]
    score: float
    coverage: float
    language: str
    choices: Mapping[str, ChoiceDistribution] = field(default_factory=dict)
    list_lengths: Mapping[str, int] = field(default_factory=dict)  # items written per list answer, as parsed
    before_extension: TaskAnswer | None = None  # the answer before a doubtful list was asked to go on
    # per single-choice control, the labels second opinions answered with the label list in another order
    alternatives: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        return bool(self.regions)

    def with_regions(self, regions: list[dict[str, Any]], score: float, coverage: float) -> TaskAnswer:
        return replace(self, regions=regions, score=score, coverage=coverage)


def choice_distribution(tokens: Sequence[tuple], key: str, allowed: Sequence[str]) -> list[float] | None:
    """P(choice) over `allowed` from the alternatives along the answer after `"key":`, or None.

    Mostly its first token decides; where choices share their first tokens the answer is read
    on until one is left (`scoring.path_distribution`).
    """
    at = value_start("".join(t[0] for t in tokens), key)
    return None if at is None else path_distribution(tokens, at, allowed)


def choice_distributions(
    targets: Sequence[Target], tokens: Sequence[tuple], regions: list[dict]
) -> dict[str, ChoiceDistribution]:
    """The distribution of each answered single-choice control the logprobs cover."""
    answered = {r.get("from_name") for r in regions}
    out: dict[str, ChoiceDistribution] = {}
    for target in targets:
        if not is_single_choice(target) or target.name not in answered:
            continue
        allowed = ordered(target.control.labels or [])
        if tokens and (dist := choice_distribution(tokens, target.name, allowed)) is not None:
            out[target.name] = ChoiceDistribution(tuple(allowed), tuple(dist))
    return out


def read_answer(
    schema: LabelingSchema, texts: dict[str, str], wanted: Sequence[Target], text: str, tokens: Tokens
) -> TaskAnswer:
    """The task's answer in a reply's `text` (and its token logprobs, if any): valid regions only."""
    names = [t.name for t in wanted]
    parsed = parse_reply(text, names, extras=(CONFIDENCE_KEY,))
    regions, answered = build_results(
        schema, parsed, texts,
        lambda target, value: region_confidence(tokens, value, target.name, target.control.labels or ()),
    )
    coverage = (answered / len(wanted) if wanted else 0.0) * completeness(tokens, parsed, names)
    score = prediction_score(tokens, [r["score"] for r in regions if "score" in r], coverage, parsed)
    lists = {name: len(parsed[name]) for name in names if isinstance(parsed.get(name), list)}
    choices = choice_distributions(wanted, tokens, regions)
    return TaskAnswer(regions, score, coverage, prompt_language(texts), choices, lists)
