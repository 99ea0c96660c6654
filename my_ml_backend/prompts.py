"""Chat messages for one task: one part per text/control pair, one JSON answer for all.

One call per task covers every control of the task (ModelScope's free tier counts
calls), and the reply is a single JSON object keyed by control name so that the
parser can tie every answer to its control.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .controls import HANDLERS
from .labeling import LabelingSchema, Target, TextSource

CONFIDENCE_KEY = "_confidence"

logger = logging.getLogger(__name__)

# Bump when the wording changes: it is part of model_version, so Label Studio re-predicts.
PROMPT_VERSION = "2"

SYSTEM_PROMPT = (
    "你是一个专业、严谨的数据标注助手，为 Label Studio 做预标注。"
    "严格按照要求完成每一项标注，只输出一个 JSON 对象，不要输出任何解释或其他文字。\n"
    "You are a careful data-annotation assistant. Reply with one json object only."
)


def read_texts(schema: LabelingSchema, data: dict, max_chars: int) -> tuple[dict[str, str], list[str]]:
    """The task's text per object name (truncated to `max_chars`), and the names cut."""
    texts: dict[str, str] = {}
    truncated: list[str] = []
    for source in schema.sources:
        text = source.read(data)
        if text is None:
            continue
        if max_chars and len(text) > max_chars:
            text = text[:max_chars]
            truncated.append(source.name)
        texts[source.name] = text
    return texts, truncated


def _text_block(source: TextSource, text: str) -> str:
    return f"### 文本 {source.name} (${source.data_key})\n<<<\n{text}\n>>>"


def wanted_targets(schema: LabelingSchema, texts: dict[str, str]) -> list[Target]:
    """The targets a task can be asked about: those with at least one of its texts present."""
    return [t for t in schema.targets if any(s.name in texts for s in t.sources)]


def answer_schema(schema: LabelingSchema, texts: dict[str, str]) -> dict[str, Any]:
    """A lean JSON Schema of the reply (one property per control, plus `_confidence`)."""
    targets = wanted_targets(schema, texts)
    properties = {t.name: HANDLERS[t.tag].json_schema(t) for t in targets}
    properties[CONFIDENCE_KEY] = {"type": "number", "minimum": 0, "maximum": 1}
    return {"type": "object", "properties": properties, "required": [t.name for t in targets]}


def build_prompt(schema: LabelingSchema, texts: dict[str, str]) -> list[dict[str, str]]:
    """Messages asking for every target of `schema` whose texts are present in `texts`."""
    used = [s for s in schema.sources if s.name in texts]
    parts = []
    answer_shape = []
    for n, target in enumerate(wanted_targets(schema, texts)):
        handler = HANDLERS[target.tag]
        on = "、".join(s.name for s in target.sources if s.name in texts)
        parts.append(f'{n + 1}. "{target.name}"（针对文本 {on}）：{handler.instruction(target)}')
        answer_shape.append(f"{json.dumps(target.name, ensure_ascii=False)}: {handler.answer_format(target)}")
    user = "\n\n".join(
        [
            "## 待标注内容 (content)",
            *(_text_block(s, texts[s.name]) for s in used),
            "## 标注任务 (tasks)",
            "\n".join(parts),
            "## 输出格式 (output format)",
            f'"{CONFIDENCE_KEY}" 是你对整体答案的把握程度，0 到 1 (your confidence in the whole answer, 0-1)。',
            "只输出如下 JSON 对象 (reply with this json object only):\n{"
            + ", ".join([*answer_shape, f'"{CONFIDENCE_KEY}": <0-1>'])
            + "}",
        ]
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
