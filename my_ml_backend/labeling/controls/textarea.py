"""`<TextArea>`: generated text (code comments, analysis, answers, error diagnosis)."""

from __future__ import annotations

import json
from typing import Any

from ..schema import Target
from .base import TEXT_OBJECTS, Lang, say


def _describe(target: Target, lang: Lang) -> str:
    attr = target.control.attr
    for key in ("hint", "placeholder", "title"):
        if attr.get(key):
            return str(attr[key])
    return say(lang, f"write the {target.name}", f"为「{target.name}」写出内容")


class TextAreaHandler:
    tag = "textarea"
    object_tags = TEXT_OBJECTS

    def instruction(self, target: Target, lang: Lang) -> str:
        return say(lang, "write text: ", "生成文本：") + _describe(target, lang)

    def answer_format(self, target: Target, lang: Lang) -> str:
        return say(lang, '"<text>"', '"<文本>"')

    def json_schema(self, target: Target) -> dict[str, Any]:
        return {"type": "string"}

    def to_values(self, target: Target, answer: Any, text: str = "") -> list[dict[str, Any]]:
        if answer is None:
            return []
        items = answer if isinstance(answer, list) else [answer]
        texts = []
        for item in items:
            text = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            if text.strip():
                texts.append(text.strip())
        return [{"text": texts}] if texts else []

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        texts = [str(t) for v in values for t in result_texts(v.get("text")) if str(t).strip()]
        return "\n".join(texts) if texts else None


def result_texts(text: Any) -> list[Any]:
    """A result's `text`: a list of strings from Label Studio; one imported string is one text, not its letters."""
    return [text] if isinstance(text, str) else text if isinstance(text, list) else []
