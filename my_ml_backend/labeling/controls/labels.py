"""`<Labels>` on a Text object: named entities and spans, offsets computed by us."""

from __future__ import annotations

from typing import Any

from ..schema import Target
from .base import Lang, options_block, ordered, say
from .matching import match_value
from .spans import Span, locate, resolve_overlaps


def _allowed(target: Target) -> list[str]:
    return ordered(target.control.labels or [])


def _entities(answer: Any) -> list[dict[str, Any]]:
    """Accept [{"text", "label"}], {"PER": ["张三"]}, or [["张三", "PER"]] shapes."""
    if isinstance(answer, dict):
        if "text" in answer or "entity" in answer:
            return [answer]
        out = []
        for label, mentions in answer.items():
            for mention in mentions if isinstance(mentions, list) else [mentions]:
                out.append({"text": mention, "label": label})
        return out
    if isinstance(answer, list):
        out = []
        for item in answer:
            if isinstance(item, dict):
                out.append(item)
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                out.append({"text": item[0], "label": item[1]})
        return out
    return []


def _hint(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        return None


class LabelsHandler:
    tag = "labels"
    object_tags = frozenset({"text"})  # HyperText/Paragraphs spans use other offset shapes

    def instruction(self, target: Target, lang: Lang) -> str:
        head = say(
            lang,
            "list every entity of these types in the text, one item each: its name exactly as written "
            "in the text (a name, never a whole sentence, never a type name); [] when there is none:",
            "列出文本中下列类型的每一个实体，每个一项：text 为原文中的实体名称"
            "（逐字照抄；只写名称，不要整句，不要写类型名）；没有则为 []：",
        )
        return f"{head}\n{options_block(target)}"

    def answer_format(self, target: Target, lang: Lang) -> str:
        en = '[{"label": "<type>", "text": "<entity name>"}, ...]'
        return say(lang, en, '[{"label": "<类型>", "text": "<实体名称>"}, ...]')

    def json_schema(self, target: Target) -> dict[str, Any]:
        item = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": _allowed(target)}, "text": {"type": "string"}},
            "required": ["label", "text"],
        }
        return {"type": "array", "items": item}

    def to_values(self, target: Target, answer: Any, text: str) -> list[dict[str, Any]]:
        allowed = _allowed(target)
        spans: list[Span] = []
        for entity in _entities(answer):
            mention = entity.get("text") or entity.get("entity") or entity.get("span")
            raw_label = entity.get("label") or entity.get("labels") or entity.get("type")
            if isinstance(raw_label, list):
                raw_label = raw_label[0] if raw_label else None
            label = match_value(str(raw_label), allowed) if raw_label is not None else None
            if not isinstance(mention, str) or label is None:
                continue
            spans.extend(locate(text, mention, label, _hint(entity.get("start"))))
        return [
            {"start": s.start, "end": s.end, "text": s.text_in(text), "labels": [s.label]}
            for s in resolve_overlaps(spans)
        ]

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        allowed = set(_allowed(target))  # a label the config no longer has is not an answer to show or judge by
        spans = [v for v in values if isinstance(v.get("text"), str) and v["text"] and isinstance(v.get("labels"), list)
                 and v["labels"] and v["labels"][0] in allowed]
        spans.sort(key=lambda v: (_hint(v.get("start")) or 0, _hint(v.get("end")) or 0))
        return [{"label": v["labels"][0], "text": v["text"]} for v in spans]
