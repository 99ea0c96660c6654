"""Annotated tasks as examples: the human's answers in the shape we ask the model for.

An annotation is a list of Label Studio results; the model answers a JSON object
keyed by control name. Converting one into the other (each control handler's
`to_answer`) lets a human's work be shown to the model as a few-shot example, and
lets predictions be scored against annotations control by control.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..labeling.controls import HANDLERS
from ..labeling.prompts import read_texts
from ..labeling.schema import LabelingSchema

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Example:
    """One annotated task: its texts (per object name) and the human's answer per control."""

    task_id: int
    texts: dict[str, str]
    answers: dict[str, Any]


def answers_from_results(schema: LabelingSchema, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Control name -> answer, for the controls we predict that the results fill in."""
    values: dict[str, list[dict[str, Any]]] = {}
    for result in results or []:
        if isinstance(result, dict) and isinstance(result.get("value"), dict):
            values.setdefault(str(result.get("from_name")), []).append(result["value"])
    answers = {}
    for target in schema.targets:
        if target.name in values:
            try:
                answer = HANDLERS[target.tag].to_answer(target, values[target.name])
            except (TypeError, ValueError, AttributeError, KeyError, IndexError):  # a result of another shape
                logger.debug("Result of %s skipped: %s", target.name, values[target.name])
                continue
            if answer is not None:
                answers[target.name] = answer
    return answers


def region_pairs(
    schema: LabelingSchema, results: list[dict[str, Any]], answers: dict[str, Any]
) -> list[tuple[str, float, bool]]:
    """(control, region score, the annotator's `answers` have that region) for each scored predicted region.

    A region's own answer is `to_answer` of it alone: a span (an entity: label and text) must
    be in the annotator's list; any other answer (a choice, a set of choices) must equal theirs.
    """
    targets = {t.name: t for t in schema.targets}
    pairs = []
    for result in results or []:
        target = targets.get(str(result.get("from_name")))
        score, value = result.get("score"), result.get("value")
        if target is None or not isinstance(score, (int, float)) or not isinstance(value, dict):
            continue
        mine, gold = HANDLERS[target.tag].to_answer(target, [value]), answers.get(target.name)
        if isinstance(mine, list) and mine and all(isinstance(item, dict) for item in mine):  # spans
            right = isinstance(gold or [], list) and all(item in (gold or []) for item in mine)
        elif isinstance(mine, list) and isinstance(gold, list):  # multiple choices: the same set
            right = sorted(map(str, mine)) == sorted(map(str, gold))
        else:
            right = mine == gold
        pairs.append((target.name, float(score), right))
    return pairs


def example_from_annotation(
    schema: LabelingSchema, task: dict[str, Any], results: list[dict[str, Any]], max_chars: int
) -> Example | None:
    """The example an annotation makes, or None (cancelled/empty, or no text to show)."""
    data = task.get("data")
    texts, _ = read_texts(schema, data if isinstance(data, dict) else {}, max_chars)
    answers = answers_from_results(schema, results)
    if not texts or not answers or task.get("id") is None:
        return None
    return Example(task_id=int(task["id"]), texts=texts, answers=answers)
