"""A list answer the model closed in doubt, asked once more and made to go on.

A small model's usual entity error is a list one item short, written as surely as a right one; its doubt
shows where it closed the list (P(complete), `scoring.list_complete`). Asking the same prompt again with the
list's `minItems` one above what it wrote makes a schema-constrained decoder write one more item, and at
temperature 0 the items already written come back unchanged. The new item is kept only when it names a
mention the list does not hold yet. No library chooses when to ask and what to keep (docs/decisions.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .answers import TaskAnswer
from .scoring import Tokens, list_complete

KEEP_FROM = 0.5  # a forced item is kept when its own score says it is more likely right than not
ENFORCING_MODES = frozenset({"json_schema", "json_object_schema"})  # modes that send the schema to the decoder


def doubtful(tokens: Tokens, list_lengths: Mapping[str, int], below: float) -> dict[str, int]:
    """`{control: items written}` for each list answer whose P(complete) is under `below`."""
    out = {}
    for name, count in list_lengths.items():
        if (p := list_complete(tokens, name)) is not None and p < below:
            out[name] = count
    return out


def forced_schema(schema: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """`schema` with each doubtful list made to hold one item more than it did."""
    forced = copy.deepcopy(schema)
    for name, count in counts.items():
        forced["properties"][name]["minItems"] = count + 1
    return forced


def enforced(schema: dict[str, Any], list_lengths: Mapping[str, int]) -> bool:
    """Whether a reply to `forced_schema` holds as many items as it demanded (an endpoint may ignore minItems)."""
    demanded = {name: p["minItems"] for name, p in schema.get("properties", {}).items() if "minItems" in p}
    return all(list_lengths.get(name, -1) >= n for name, n in demanded.items())


def _overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def new_regions(first: list[dict], second: list[dict], names: Sequence[str]) -> list[dict]:
    """The regions of `second`, under `names`, whose span overlaps none of `first`'s regions of that control."""
    kept = []
    for region in second:
        name, value = region.get("from_name"), region.get("value") or {}
        if name not in names or "start" not in value:
            continue
        if not any(r.get("from_name") == name and _overlaps(r["value"], value) for r in first):
            kept.append(region)
    return kept


def extended(
    first: TaskAnswer,
    second: TaskAnswer,
    completes: tuple[dict[str, float | None], dict[str, float | None]],
    wanted: int,
    keep_from: float,
) -> TaskAnswer:
    """`first` with the new mentions `second` found, rescored; `first` itself when it found none worth keeping.

    `completes`: P(complete) of every list control in the first reply, and of the forced ones in
    the second; a grown list takes the second's (its new end), the others keep the first's. `wanted`: controls asked.
    A new region scored under `keep_from` is left out (a forced item the model doubts is an
    invention more often than a find).
    """
    added = [r for r in new_regions(first.regions, second.regions, list(completes[1]))
             if r.get("score") is None or r["score"] >= keep_from]
    if not added:
        return first
    regions = first.regions + added
    grown = {r["from_name"] for r in added}
    answered = len({r.get("from_name") for r in regions})
    factor = answered / wanted if wanted else 0.0
    for name, p in completes[0].items():
        p = completes[1].get(name) if name in grown else p
        factor *= p if p is not None else 1.0
    scores = [r["score"] for r in regions if r.get("score") is not None]
    score = round(sum(scores) / len(scores) * factor, 4) if scores else first.score
    return first.with_regions(regions, score, factor)


def extend(
    answer: TaskAnswer,
    tokens: Tokens,
    schema: dict[str, Any],
    wanted: int,
    again: Callable[[dict[str, Any]], tuple[TaskAnswer, Tokens] | None],
    below: float,
    keep_from: float = KEEP_FROM,
) -> TaskAnswer:
    """`answer` (read from a reply with `tokens`), its doubtful lists asked `again` with `schema` forced to go on.

    `again(schema)`: the answer and tokens of the same prompt with that schema, or None when that call
    failed (the first answer stands). No call when no list is doubtful. `wanted`: how many controls were asked.
    """
    counts = doubtful(tokens, answer.list_lengths, below)
    if not counts or (second := again(forced_schema(schema, counts))) is None:
        return answer
    completes = (
        {name: list_complete(tokens, name) for name in answer.list_lengths},
        {name: list_complete(second[1], name) for name in counts},
    )
    grown = extended(answer, second[0], completes, wanted, keep_from)
    return grown if grown is answer else replace(grown, before_extension=answer)
