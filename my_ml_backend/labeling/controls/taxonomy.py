"""`<Taxonomy>`: hierarchical classification; answers are full paths from the root."""

from __future__ import annotations

import re
from typing import Any

from ..schema import Target
from .base import TEXT_OBJECTS, Lang, options_block, ordered, say
from .matching import as_list, match_value

SEPARATOR = " / "


def _options(target: Target) -> dict[str, tuple[str, ...]]:
    return {SEPARATOR.join(p): p for p in target.paths}


def _multiple(target: Target) -> bool:
    return str(target.control.attr.get("maxUsages", "")) != "1"


class TaxonomyHandler:
    tag = "taxonomy"
    object_tags = TEXT_OBJECTS

    def instruction(self, target: Target, lang: Lang) -> str:
        en = "hierarchical category: choose the most specific path(s) that fit:"
        head = say(lang, en, "层级分类：选出最符合的最具体路径：")
        return f"{head}\n{options_block(target, list(_options(target)))}"

    def answer_format(self, target: Target, lang: Lang) -> str:
        return say(lang, '["<path>"]', '["<路径>"]')

    def json_schema(self, target: Target) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "string", "enum": ordered(_options(target))}}

    def to_values(self, target: Target, answer: Any, text: str = "") -> list[dict[str, Any]]:
        options = _options(target)
        leaves = {p[-1]: p for p in target.paths}
        picked: list[list[str]] = []
        for candidate in as_list(answer):
            parts = [p.strip() for p in re.split(r"[/>›»]", candidate) if p.strip()]
            key = match_value(SEPARATOR.join(parts), list(options))
            path = options.get(key) if key else None
            if path is None and parts and (leaf := match_value(parts[-1], list(leaves))):
                path = leaves[leaf]  # the model named only the node: complete its path
            if path and list(path) not in picked:
                picked.append(list(path))
        if not picked:
            return []
        return [{"taxonomy": picked if _multiple(target) else picked[:1]}]

    def to_answer(self, target: Target, values: list[dict[str, Any]]) -> Any:
        options = _options(target)  # a path the config no longer has is not an answer to show or judge by
        paths = [SEPARATOR.join(path) for v in values if isinstance(v.get("taxonomy"), list)
                 for path in v["taxonomy"] if isinstance(path, list) and all(isinstance(p, str) for p in path)]
        return [p for p in paths if p in options] or None
