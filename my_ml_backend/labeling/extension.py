"""A list answer the model closed in doubt, asked once more and made to go on.

Why (measured, bench/RESULTS.md): a small model's usual entity error is a list one
item short, written as surely as a right one. Its doubt shows where it closed the
list: P(complete) (`scoring.list_complete`) is low there. Asking the same prompt again
with the list's `minItems` one above what it wrote makes a schema-constrained decoder
write one more item. At temperature 0 the items already written come back unchanged
(the grammar only forbids the `]`), so the new item is the continuation the model
weighed and declined. It is kept only when it names a mention the list does not hold
yet (a forced item on a complete list is mostly a listed name again under another type).

No library does this: constrained decoders take `minItems`, but choosing when to ask
and what to keep is ours. Only where logprobs come back (the doubt is read from them)
and the endpoint enforced the schema (else the same list comes back, at a call's cost).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from .calibration import PRIVATE_KEY
from .parsing import parse_reply
from .scoring import Tokens, list_complete

KEEP_FROM = 0.5  # a forced item is kept when its own score says it is more likely right than not
ENFORCING_MODES = frozenset({"json_schema", "json_object_schema"})  # modes that send the schema to the decoder


def doubtful(tokens: Tokens, answers: dict[str, Any], names: Sequence[str], below: float) -> dict[str, int]:
    """`{control: items written}` for each list answer whose P(complete) is under `below`."""
    out = {}
    for name in names:
        answer = answers.get(name)
        if isinstance(answer, list) and (p := list_complete(tokens, name)) is not None and p < below:
            out[name] = len(answer)
    return out


def forced_schema(schema: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """`schema` with each doubtful list made to hold one item more than it did."""
    forced = copy.deepcopy(schema)
    for name, count in counts.items():
        forced["properties"][name]["minItems"] = count + 1
    return forced


def enforced(schema: dict[str, Any], text: str) -> bool:
    """Whether a reply to `forced_schema` holds as many items as it demanded (an endpoint may ignore minItems)."""
    demanded = {name: p["minItems"] for name, p in schema.get("properties", {}).items() if "minItems" in p}
    answers = parse_reply(text, list(demanded))
    return all(isinstance(answers.get(name), list) and len(answers[name]) >= n for name, n in demanded.items())


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
    first: dict[str, Any],
    second: dict[str, Any],
    completes: tuple[dict[str, float | None], dict[str, float | None]],
    wanted: int,
    keep_from: float,
) -> dict[str, Any]:
    """`first` with the new mentions `second` found, rescored; `first` itself when it found none worth keeping.

    `completes`: P(complete) of every list control in the first reply, and of the forced ones in
    the second; a grown list takes the second's (its new end), the others keep the first's. `wanted`: controls asked.
    A new region scored under `keep_from` is left out (a forced item the model doubts is an
    invention more often than a find).
    """
    added = [r for r in new_regions(first.get("result") or [], second.get("result") or [], list(completes[1]))
             if r.get("score") is None or r["score"] >= keep_from]
    if not added:
        return first
    results = (first.get("result") or []) + added
    grown = {r["from_name"] for r in added}
    answered = len({r.get("from_name") for r in results})
    factor = answered / wanted if wanted else 0.0
    for name, p in completes[0].items():
        p = completes[1].get(name) if name in grown else p
        factor *= p if p is not None else 1.0
    scores = [r["score"] for r in results if r.get("score") is not None]
    out = {**first, "result": results}
    if scores:
        out["score"] = round(sum(scores) / len(scores) * factor, 4)
    if isinstance(private := out.get(PRIVATE_KEY), dict):  # `calibration.carry`'s: a re-score keeps the factor
        out[PRIVATE_KEY] = {**private, "coverage": factor}
    return out


def extend(
    prediction: dict[str, Any],
    reply: tuple[str, Tokens],
    schema: dict[str, Any],
    names: Sequence[str],
    again: Callable[[dict[str, Any]], tuple[dict[str, Any], Tokens] | None],
    below: float,
    keep_from: float = KEEP_FROM,
) -> dict[str, Any]:
    """The prediction of `reply` (text, tokens), its doubtful lists asked `again` with `schema` forced to go on.

    `again(schema)`: the prediction and tokens of the same prompt with that schema, or None
    when that call failed (the first prediction stands). No call when no list is doubtful.
    """
    text, tokens = reply
    answers = parse_reply(text, list(names))
    counts = doubtful(tokens, answers, names, below)
    if not counts or (second := again(forced_schema(schema, counts))) is None:
        return prediction
    completes = (
        {name: list_complete(tokens, name) for name in names if isinstance(answers.get(name), list)},
        {name: list_complete(second[1], name) for name in counts},
    )
    return extended(prediction, second[0], completes, len(names), keep_from)
