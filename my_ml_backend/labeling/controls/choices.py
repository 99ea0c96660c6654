"""`<Choices>`: single or multiple classification; only config values ever come out."""

from __future__ import annotations

import logging
import re
from typing import Any

from ..schema import Target
from .base import TEXT_OBJECTS, Lang, listed, options_block, say
from .matching import as_list, closest_value, match_value

logger = logging.getLogger(__name__)

_SPLIT = re.compile(r"[,，;；、|/\n]+")


def _allowed(target: Target) -> list[str]:
    return listed(target)


def aliases_of(target: Target) -> dict[str, list[str]]:
    """Each choice's other names in the config: its `alias` and its `hint`."""
    attrs = target.control.labels_attrs or {}
    return {value: [str(tag.attr[k]) for k in ("alias", "hint") if tag.attr.get(k)]
            for value, tag in attrs.items() if tag is not None}


def _multiple(target: Target) -> bool:
    return target.control.attr.get("choice") == "multiple"


def is_single_choice(target: Target) -> bool:
    """A `<Choices>` answered with one value: what calibration, second opinions and a plain answer work on."""
    return target.tag == "choices" and not _multiple(target)


class ChoicesHandler:
    tag = "choices"
    object_tags = TEXT_OBJECTS

    def instruction(self, target: Target, lang: Lang) -> str:
        if _multiple(target):
            head = say(lang, "choose every category that applies:", "多选：选出所有符合的类别：")
        else:
            head = say(lang, "choose the one category that fits best:", "单选：选出最符合的一个类别：")
        return f"{head}\n{options_block(target)}"

    def answer_format(self, target: Target, lang: Lang) -> str:
        one = say(lang, '"<category>"', '"<类别>"')
        return f"[{one}, ...]" if _multiple(target) else one

    def json_schema(self, target: Target) -> dict[str, Any]:
        item = {"type": "string", "enum": _allowed(target)}
        return {"type": "array", "items": item} if _multiple(target) else item

    def to_values(self, target: Target, answer: Any, text: str = "") -> list[dict[str, Any]]:
        allowed = _allowed(target)
        candidates = as_list(answer)
        picked: list[str] = []
        for candidate in candidates:
            match = match_value(candidate, allowed)
            parts = [match] if match else [match_value(p, allowed) for p in _SPLIT.split(candidate)]
            for value in parts:
                if value and value not in picked:
                    picked.append(value)
        if not picked:  # no value named as such: the near misses of a model no grammar holds to the list
            aliases = aliases_of(target)
            near = [(c, value) for c in candidates if (value := closest_value(c, allowed, aliases))]
            picked = list(dict.fromkeys(value for _, value in near))
            for said, value in near:
                logger.debug("Choices %s: answer %r read as the closest choice %r", target.name, said, value)
        if not picked:
            logger.debug("Choices %s: no choice close to the answer %r among %s", target.name, answer, allowed)
            return []
        if not _multiple(target):
            picked = picked[:1]
        return [{"choices": picked}]

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        allowed = set(_allowed(target))  # a value the config no longer has is not an answer to show or judge by
        picked = [c for v in values if isinstance(v.get("choices"), list) for c in v["choices"] if c in allowed]
        if not picked:
            return None
        return picked if _multiple(target) else picked[0]
