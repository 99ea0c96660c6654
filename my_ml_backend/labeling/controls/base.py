"""The contract every control handler fulfils, and the prompt wording they share."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

from ..schema import TEXT_OBJECT_TAGS, Target

TEXT_OBJECTS = TEXT_OBJECT_TAGS

# The prompt's language: "en" or "zh" (see `prompts.prompt_language`).
Lang = str


class ControlHandler(Protocol):
    """How one control type is asked for and how its answer becomes Label Studio results."""

    tag: str  # lower-case Label Studio tag name, e.g. "choices"
    object_tags: frozenset[str]  # object tags (lower-case) this control can pre-annotate

    def instruction(self, target: Target, lang: Lang) -> str:
        """The prompt part for this control in `lang` (what to do, which values are allowed)."""
        ...

    def answer_format(self, target: Target, lang: Lang) -> str:
        """The JSON value shape expected under the control's key, shown in the prompt."""
        ...

    def json_schema(self, target: Target) -> dict[str, Any]:
        """A lean JSON Schema for the answer, for endpoints that enforce schemas."""
        ...

    def to_values(self, target: Target, answer: Any, text: str) -> list[dict[str, Any]]:
        """Result `value` dicts for the answer about `text`; empty when the answer is unusable."""
        ...

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        """The reverse: a human's result values as the answer we ask the model for.

        Used to show annotated tasks as few-shot examples and to score predictions
        against annotations; None when the values hold no answer.
        """
        ...


def say(lang: Lang, en: str, zh: str) -> str:
    """The wording for `lang`: the prompt speaks the task's language, not both at once."""
    return zh if lang == "zh" else en


def _natural(value: str) -> tuple:
    """Sort key: case-folded, numbers by value ("2 stars" before "10 stars")."""
    parts = re.split(r"(\d+)", value.casefold())
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts)


def ordered(values: Iterable[str]) -> list[str]:
    """A label set in one canonical (natural, case-folded) order, whatever its order in the config.

    Small models favour a list position, so a prompt that
    lists values in config order gives answers that move when the config's tags are
    reordered. Every prompt and schema lists label sets through this; the remaining
    pull of the listed position is divided out by `calibration` where logprobs allow.
    """
    return sorted(values, key=lambda v: (_natural(str(v)), str(v)))


def listed(target: Target) -> list[str]:
    """The target's labels in the order its prompt lists them: canonical, unless a second opinion asks another."""
    return list(target.listed_order) if target.listed_order else ordered(target.control.labels or [])


def options_block(target: Target, values: list[str] | None = None) -> str:
    """The allowed values one per line in canonical order, each with the config's `hint` when it has one.

    A list read top to bottom, each value beside its meaning, rather than a JSON array
    to copy from: small models copy the first element of an array (position bias).
    """
    values = listed(target) if values is None else ordered(values)
    attrs = target.control.labels_attrs or {}
    lines = []
    for value in values:
        tag = attrs.get(value)
        hint = str(tag.attr.get("hint") or "").strip() if tag is not None else ""
        lines.append(f"   - {value}" + (f": {hint}" if hint else ""))
    return "\n".join(lines)
