"""Scores that mean something: token probabilities when the endpoint gives them.

- Region score: with logprobs, the probability the model gave to the tokens that
  spell that region's answer in the reply, multiplied (the joint probability of the
  chosen label, or of an entity's text and label). Only the tokens after the control's
  own key count, so a label word inside the `_reason` does not stand for the answer.
  The product, not the geometric mean: the first token of an answer carries the
  decision and the rest are near-certain, so averaging would flatten the doubt.
- Prediction score: with logprobs, the mean region score (or, failing that, the
  whole reply's token probability) times coverage; without logprobs, the model's own
  `_confidence` (0–1, asked for in the prompt) times coverage; if it gave none,
  coverage alone. Coverage is the share of the task's controls that got a valid
  answer, so an unanswered control always lowers the score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .prompts import CONFIDENCE_KEY

# (token, logprob[, alternatives]) of a reply, as the LLM client reads them from the endpoint.
Tokens = Sequence[tuple]


def mean_probability(logprobs: Sequence[float]) -> float | None:
    """exp(mean logprob): the geometric-mean probability of a run of tokens."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else None


def _span_logprobs(tokens: Tokens, joined: str, needle: str, after: int) -> tuple[list[float], int] | None:
    """Logprobs of the tokens spelling `needle` (first found at or after `after`), and where it ends."""
    start = joined.find(needle, after)
    if start < 0:
        start = joined.find(json.dumps(needle, ensure_ascii=False)[1:-1], after)
    if start < 0:
        return None
    end, offset, picked = start + len(needle), 0, []
    for token in tokens:
        if offset < end and offset + len(token[0]) > start:
            picked.append(token[1])
        offset += len(token[0])
    return picked, end


def answer_text(value: dict[str, Any]) -> str | None:
    """The text that spells a region's answer in the reply."""
    if "labels" in value and "text" in value:
        return str(value["text"])
    for key in ("choices", "text", "taxonomy"):
        items = value.get(key)
        while isinstance(items, list) and items:
            items = items[-1] if key == "taxonomy" else items[0]
        if isinstance(items, str) and items:
            return items[:60]
    for key in ("rating", "number", "datetime"):
        if key in value:
            return str(value[key])
    return None


def region_confidence(tokens: Tokens, value: dict[str, Any], key: str = "") -> float | None:
    """Joint probability of the answer's own tokens after `"key"`, or None without logprobs or a match."""
    needle = answer_text(value)
    if not tokens or not needle:
        return None
    joined = "".join(token[0] for token in tokens)
    after = max(0, joined.find(json.dumps(key, ensure_ascii=False))) if key else 0
    found = _span_logprobs(tokens, joined, needle, after)
    if found is None:
        return None
    picked, end = found
    if "labels" in value and value["labels"]:  # an entity: its label's tokens count too
        label = _span_logprobs(tokens, joined, str(value["labels"][0]), end)
        picked += label[0] if label else []
    return math.exp(sum(picked)) if picked else None


def self_reported(answers: dict[str, Any]) -> float | None:
    value = answers.get(CONFIDENCE_KEY)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number > 1 and number <= 100:  # "85" meaning 85 %
        number /= 100
    return number if 0 <= number <= 1 else None


def prediction_score(tokens: Tokens, region_scores: list[float], coverage: float, answers: dict[str, Any]) -> float:
    if tokens:
        whole = mean_probability([token[1] for token in tokens])
        base = sum(region_scores) / len(region_scores) if region_scores else whole
    else:
        base = self_reported(answers)
    return round((base if base is not None else 1.0) * coverage, 4)
