"""The contract every control handler fulfils."""

from __future__ import annotations

from typing import Any, Protocol

from ..labeling import Target


class ControlHandler(Protocol):
    """How one control type is asked for and how its answer becomes Label Studio results."""

    tag: str  # lower-case Label Studio tag name, e.g. "choices"

    def instruction(self, target: Target) -> str:
        """The prompt part for this control (what to do, which values are allowed)."""
        ...

    def answer_format(self, target: Target) -> str:
        """The JSON value shape expected under the control's key, shown in the prompt."""
        ...

    def to_values(self, target: Target, answer: Any) -> list[dict[str, Any]]:
        """Result `value` dicts for the answer; empty when the answer is unusable."""
        ...
