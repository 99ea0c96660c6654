"""The contract every control handler fulfils."""

from __future__ import annotations

from typing import Any, Protocol

from ..schema import TEXT_OBJECT_TAGS, Target


class ControlHandler(Protocol):
    """How one control type is asked for and how its answer becomes Label Studio results."""

    tag: str  # lower-case Label Studio tag name, e.g. "choices"
    object_tags: frozenset[str]  # object tags (lower-case) this control can pre-annotate

    def instruction(self, target: Target) -> str:
        """The prompt part for this control (what to do, which values are allowed)."""
        ...

    def answer_format(self, target: Target) -> str:
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


TEXT_OBJECTS = TEXT_OBJECT_TAGS
