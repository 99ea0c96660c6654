"""`<Choices>`: single or multiple classification; only config values ever come out."""

from __future__ import annotations

import json
import re
from typing import Any

from ..schema import Target
from .base import TEXT_OBJECTS
from .matching import as_list, match_value

_SPLIT = re.compile(r"[,，;；、|/\n]+")


def _allowed(target: Target) -> list[str]:
    return list(target.control.labels or [])


def _multiple(target: Target) -> bool:
    return target.control.attr.get("choice") == "multiple"


class ChoicesHandler:
    tag = "choices"
    object_tags = TEXT_OBJECTS

    def instruction(self, target: Target) -> str:
        allowed = json.dumps(_allowed(target), ensure_ascii=False)
        if _multiple(target):
            return f"多选分类：从这些选项中选出所有符合的 (multi-label, choose all that apply): {allowed}"
        return f"单选分类：只能从这些选项中选一个 (single choice, pick exactly one): {allowed}"

    def answer_format(self, target: Target) -> str:
        return '["<选项>", "..."]' if _multiple(target) else '"<选项>"'

    def json_schema(self, target: Target) -> dict[str, Any]:
        item = {"type": "string", "enum": _allowed(target)}
        return {"type": "array", "items": item} if _multiple(target) else item

    def to_values(self, target: Target, answer: Any, text: str = "") -> list[dict[str, Any]]:
        allowed = _allowed(target)
        picked: list[str] = []
        for candidate in as_list(answer):
            match = match_value(candidate, allowed)
            parts = [match] if match else [match_value(p, allowed) for p in _SPLIT.split(candidate)]
            for value in parts:
                if value and value not in picked:
                    picked.append(value)
        if not picked:
            return []
        if not _multiple(target):
            picked = picked[:1]
        return [{"choices": picked}]

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        picked = [c for v in values for c in v.get("choices") or []]
        if not picked:
            return None
        return picked if _multiple(target) else picked[0]
