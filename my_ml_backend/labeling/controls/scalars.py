"""`<Rating>`, `<Number>` and `<DateTime>`: one scalar each, range- and format-checked."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from ..schema import Target
from .base import TEXT_OBJECTS, Lang, say


def _first(answer: Any) -> Any:
    while isinstance(answer, list) and answer:
        answer = answer[0]
    if isinstance(answer, dict):
        answer = next(iter(answer.values()), None)
    return answer


def _number(answer: Any) -> float | None:
    value = _first(answer)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return None
        return number if math.isfinite(number) else None  # NaN or infinite: no answer
    match = re.search(r"-?\d+(?:\.\d+)?", str(value or ""))
    return float(match.group()) if match else None


def _bound(target: Target, name: str) -> float | None:
    try:
        return float(target.control.attr[name])
    except (KeyError, TypeError, ValueError):
        return None


class RatingHandler:
    tag = "rating"
    object_tags = TEXT_OBJECTS

    def _max(self, target: Target) -> int:
        return int(_bound(target, "maxRating") or 5)

    def instruction(self, target: Target, lang: Lang) -> str:
        top = self._max(target)
        return say(lang, f"rating: an integer from 1 to {top}", f"评分：1 到 {top} 的整数")

    def answer_format(self, target: Target, lang: Lang) -> str:
        return say(lang, "<integer>", "<整数>")

    def json_schema(self, target: Target) -> dict[str, Any]:
        return {"type": "integer", "minimum": 1, "maximum": self._max(target)}

    def to_values(self, target: Target, answer: Any, text: str = "") -> list[dict[str, Any]]:
        value = _number(answer)
        if value is None or value != int(value) or not 1 <= value <= self._max(target):
            return []
        return [{"rating": int(value)}]

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        return next((v["rating"] for v in values if "rating" in v), None)


class NumberHandler:
    tag = "number"
    object_tags = TEXT_OBJECTS

    def instruction(self, target: Target, lang: Lang) -> str:
        low, high = _bound(target, "min"), _bound(target, "max")
        low_text, high_text = low if low is not None else "-∞", high if high is not None else "∞"
        return say(lang, f"a number from {low_text} to {high_text}", f"数值，范围 {low_text} 到 {high_text}")

    def answer_format(self, target: Target, lang: Lang) -> str:
        return say(lang, "<number>", "<数字>")

    def json_schema(self, target: Target) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "number"}
        for attr, key in (("min", "minimum"), ("max", "maximum")):
            if (bound := _bound(target, attr)) is not None:
                schema[key] = bound
        return schema

    def to_values(self, target: Target, answer: Any, text: str = "") -> list[dict[str, Any]]:
        value = _number(answer)
        low, high = _bound(target, "min"), _bound(target, "max")
        if value is None or (low is not None and value < low) or (high is not None and value > high):
            return []
        return [{"number": int(value) if value == int(value) else value}]

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        return next((v["number"] for v in values if "number" in v), None)


_FORMATS = {"date": "%Y-%m-%d", "time": "%H:%M", "month": "%Y-%m", "year": "%Y"}
_PARSE = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y/%m/%d",
          "%Y年%m月%d日", "%Y-%m", "%Y年%m月", "%Y", "%H:%M:%S", "%H:%M")


class DateTimeHandler:
    tag = "datetime"
    object_tags = TEXT_OBJECTS

    def _format(self, target: Target) -> str:
        only = str(target.control.attr.get("only", "")).split(",")[0].strip()
        return _FORMATS.get(only, "%Y-%m-%dT%H:%M")

    def instruction(self, target: Target, lang: Lang) -> str:
        example = datetime(2024, 3, 5, 14, 30).strftime(self._format(target))
        return say(lang, f"date/time, formatted like {example}", f"日期/时间，格式如 {example}")

    def answer_format(self, target: Target, lang: Lang) -> str:
        return say(lang, '"<date/time>"', '"<日期时间>"')

    def json_schema(self, target: Target) -> dict[str, Any]:
        return {"type": "string"}

    def to_values(self, target: Target, answer: Any, text: str = "") -> list[dict[str, Any]]:
        raw = str(_first(answer) or "").strip()
        for fmt in _PARSE:
            try:
                parsed = datetime.strptime(raw, fmt)
            except ValueError:
                continue
            return [{"datetime": parsed.strftime(self._format(target))}]
        return []

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        return next((v["datetime"] for v in values if v.get("datetime")), None)
