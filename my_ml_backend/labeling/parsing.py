"""Read the model's reply as `{control name: answer}`, tolerating how models really write.

Models wrap JSON in code fences, add a sentence before or after it, use Chinese
quotes or full-width punctuation, or answer a single question in plain text. The
parser recovers the answers where it can and returns nothing where it cannot; it
never invents an answer. Its work is linear in the reply's length, whatever the reply holds
(`without_think` and `json_values` are also how packed replies are read). A reply cut off at
max_tokens (a small model looping over one item until the limit) keeps the items it completed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import json_repair

_FENCE_LANG = re.compile(r"(?:json|JSON)?\s*")
_FULLWIDTH = {"“": '"', "”": '"', "：": ":", "，": ",", "｛": "{", "｝": "}", "［": "[", "］": "]"}


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


# Python's json reads NaN, Infinity and 1e999 (an infinite float); no control can use them, so they
# read as null: only that answer is lost, never the task.
FINITE_NUMBERS: dict[str, Any] = {"parse_constant": lambda _name: None, "parse_float": _finite}
_DECODER = json.JSONDecoder(**FINITE_NUMBERS)
# Work bounds that keep parsing linear in the reply's length whatever it holds: at most MAX_STARTS
# positions tried as the start of a value, and at most SCAN_FACTOR x the reply's length (plus
# SCAN_SLACK) characters read by the JSON decoder.
MAX_STARTS = 500
SCAN_FACTOR = 4
SCAN_SLACK = 64 * 1024
# Replies longer than this are not salvaged (json_repair reads character by character in Python):
# a reply cut at LLM_MAX_TOKENS (1024 tokens by default) is a few KB.
SALVAGE_MAX_CHARS = 32 * 1024


def without_think(text: str) -> str:
    """`text` less its `<think>…</think>` blocks (str.find: linear, where a lazy regex is quadratic)."""
    parts, pos = [], 0
    while (start := text.find("<think>", pos)) != -1:
        end = text.find("</think>", start + 7)
        if end == -1:
            break
        parts.append(text[pos:start])
        pos = end + 8
    parts.append(text[pos:])
    return "".join(parts)


def _fences(text: str) -> list[tuple[int, int, int]]:
    """(fence start, content start, closing fence start) of the first MAX_STARTS ```` ```json … ``` ```` blocks."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while len(out) < MAX_STARTS and (start := text.find("```", pos)) != -1:
        close = text.find("```", start + 3)
        if close == -1:
            break
        inner = _FENCE_LANG.match(text, start + 3, close)
        out.append((start, inner.end() if inner else start + 3, close))
        pos = close + 3
    return out


def _unfenced(text: str) -> str:
    """`text` with each fenced block replaced by its content."""
    parts, pos = [], 0
    for start, inner, close in _fences(text):
        parts += [text[pos:start], text[inner:close]]
        pos = close + 3
    parts.append(text[pos:])
    return "".join(parts)


def _halfwidth(text: str) -> str:
    """Chinese quotes and full-width punctuation as JSON's; one character for one, so positions stay valid.

    `str.replace` per character: faster than `str.translate` with a dict on non-ASCII text.
    """
    for wide, narrow in _FULLWIDTH.items():
        if wide in text:
            text = text.replace(wide, narrow)
    return text


def _loads(candidate: str) -> dict[str, Any] | None:
    for attempt in (candidate, _halfwidth(candidate)):
        try:
            value = _DECODER.decode(attempt)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def json_values(
    text: str,
    decoder: json.JSONDecoder = _DECODER,
    openers: str = "{",
    variants: tuple[str, ...] = (),
    outermost: bool = False,
) -> Iterator[Any]:
    """The JSON values that start at an `openers` character of `text`, first to last, within the work bounds.

    `variants` are rewrites of `text` of the same length, tried at a position where `text` fails;
    `outermost` looks on from the end of each value found, so values inside it are not yielded again.
    """
    starts = re.compile(f"[{re.escape(openers)}]")
    budget = SCAN_FACTOR * len(text) + SCAN_SLACK
    found = starts.search(text)
    for _ in range(MAX_STARTS):
        if found is None or budget <= 0:
            return
        pos = after = found.start()
        for version in (text, *variants):
            try:
                value, end = decoder.raw_decode(version, pos)
            except json.JSONDecodeError as exc:
                budget -= max(1, exc.pos - pos)
                continue
            except RecursionError:
                budget -= len(text) - pos
                continue
            budget -= end - pos
            if outermost:
                after = end - 1
            yield value
            break
        found = starts.search(text, after + 1)


def _objects(text: str) -> Iterator[dict[str, Any]]:
    """Every JSON object in `text` (full-width punctuation also tried), most likely first, within bounds."""
    for _start, inner, close in _fences(text):
        if (obj := _loads(text[inner:close].strip())) is not None:
            yield obj
    if (obj := _loads(text.strip())) is not None:
        yield obj
    translated = _halfwidth(text)
    variants = () if translated == text else (translated,)
    yield from (value for value in json_values(text, variants=variants) if isinstance(value, dict))


def _salvaged(text: str) -> dict[str, Any] | None:
    """The complete part of an object cut off mid-way, e.g. `{"ner": [{...}, {...}, {"label": "LO`.

    Cut back to the last `}` or `]` (so a value cut mid-string is dropped, never completed by
    guessing), then json_repair closes the brackets left open. json_repair rather than our own
    bracket stack: it also knows strings, escapes and the usual slips of models.
    """
    if len(text) > SALVAGE_MAX_CHARS:
        return None
    start, end = text.find("{"), max(text.rfind("}"), text.rfind("]"))
    if start < 0 or end <= start:
        return None
    try:
        value = json_repair.repair_json(text[start : end + 1], return_objects=True)
    except (ValueError, RecursionError):  # nesting deeper than its parser goes
        return None
    return value if isinstance(value, dict) else None


def _answers(obj: dict[str, Any], control_names: list[str], extras: tuple[str, ...]) -> dict[str, Any]:
    """The controls' answers in one parsed object (keys matched exactly, then case-insensitively)."""
    if not any(k in obj for k in control_names) and len(obj) == 1 and len(control_names) == 1:
        obj = {control_names[0]: next(iter(obj.values()))}  # {"label": "x"} for a lone control
    answers = {k: v for k, v in obj.items() if k in control_names}
    if answers:
        return answers | {k: obj[k] for k in extras if k in obj}
    lowered = {k.casefold().strip(): v for k, v in obj.items() if isinstance(k, str)}
    return {n: lowered[n.casefold()] for n in control_names if n.casefold() in lowered}


def parse_reply(text: str, control_names: list[str], extras: tuple[str, ...] = ()) -> dict[str, Any]:
    """Answers keyed by control name (and `extras` keys); unknown keys are ignored, missing ones absent.

    With a single control, a reply that is not JSON is taken as that control's answer
    (plain-text mode), so a model that ignores the format still yields a label.
    """
    text = without_think(text).strip()
    for obj in _objects(text):
        if answers := _answers(obj, control_names, extras):
            return answers
    unfenced = _unfenced(text)
    if (obj := _salvaged(unfenced)) is not None and (answers := _answers(obj, control_names, extras)):
        return answers
    if len(control_names) == 1 and text and not text.lstrip().startswith("{"):
        return {control_names[0]: unfenced.strip()}
    return {}
