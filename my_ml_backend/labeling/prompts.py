"""Chat messages for one task: one part per text/control pair, one JSON answer for all.

One call per task covers every control of the task (ModelScope's free tier counts
calls), and the reply is a single JSON object keyed by control name so that the
parser can tie every answer to its control.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from .controls import HANDLERS
from .schema import LabelingSchema, Target, TextSource

CONFIDENCE_KEY = "_confidence"

logger = logging.getLogger(__name__)

# Bump when the wording changes: it is part of model_version, so Label Studio re-predicts.
PROMPT_VERSION = "3"


@dataclass(frozen=True)
class PromptGuidance:
    """What the project adds to the generic prompt: its instructions and output language.

    Set per project (Label Studio's ML "extra params"), by environment or prompt file;
    an interactive request may add the annotator's own instruction.
    """

    instructions: str = ""
    language: str = ""

    def fingerprint(self) -> str:
        """Part of `model_version`: other guidance, other answers."""
        if not (self.instructions or self.language):
            return ""
        return json.dumps([self.instructions, self.language], ensure_ascii=False)

    def with_instruction(self, extra: str) -> PromptGuidance:
        extra = extra.strip()
        if not extra:
            return self
        joined = f"{self.instructions}\n{extra}" if self.instructions else extra
        return replace(self, instructions=joined)

SYSTEM_PROMPT = (
    "你是一个专业、严谨的数据标注助手，为 Label Studio 做预标注。"
    "严格按照要求完成每一项标注，只输出一个 JSON 对象，不要输出任何解释或其他文字。\n"
    "You are a careful data-annotation assistant. Reply with one json object only."
)


def guidance_from_params(base: PromptGuidance, extra_params: Any) -> PromptGuidance:
    """The project's guidance: Label Studio's ML "extra params" on top of the global one.

    Accepted: `{"instructions": "...", "language": "English"}` (also `prompt` and
    `output_language`), or plain text, taken as instructions. Project instructions are
    added after the global ones (LLM_INSTRUCTIONS / PROMPT_FILE); a project language
    replaces the global one.
    """
    if isinstance(extra_params, str):
        text = extra_params.strip()
        try:
            extra_params = json.loads(text) if text.startswith("{") else {"instructions": text}
        except ValueError:
            extra_params = {"instructions": text}
    if not isinstance(extra_params, dict):
        return base
    instructions = extra_params.get("instructions") or extra_params.get("prompt") or ""
    language = extra_params.get("language") or extra_params.get("output_language") or ""
    guidance = base.with_instruction(str(instructions))
    return replace(guidance, language=str(language).strip()) if str(language).strip() else guidance


def context_instruction(schema: LabelingSchema, context: Any) -> str:
    """The annotator's instruction in an interactive request (a `prompt` TextArea's text)."""
    if not isinstance(context, dict) or not schema.prompt_controls:
        return ""
    texts = []
    for result in context.get("result") or []:
        if isinstance(result, dict) and result.get("from_name") in schema.prompt_controls:
            value = result.get("value") or {}
            texts += [str(t) for t in value.get("text") or [] if str(t).strip()]
    return "\n".join(texts)


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


def describe_target(target: Target) -> str:
    """The config's own descriptions of a control: its `hint` and its labels' hints.

    Label names alone are often ambiguous ("其他", "P1"); the project's descriptions are
    the cheapest accuracy gain there is.
    """
    notes = []
    if hint := str(target.control.attr.get("hint") or "").strip():
        notes.append(hint)
    labels = target.control.labels_attrs or {}
    hints = {value: str(tag.attr.get("hint") or "").strip() for value, tag in labels.items()}
    described = [f"{value}：{hint}" for value, hint in hints.items() if hint]
    if described:
        notes.append("选项说明 (label descriptions)：" + "；".join(described))
    return "\n   ".join(notes)


def _guidance_blocks(schema: LabelingSchema, guidance: PromptGuidance) -> list[str]:
    blocks = []
    if schema.headers:
        blocks += ["## 任务说明 (task description)", "\n".join(schema.headers)]
    if guidance.instructions:
        blocks += ["## 项目要求 (project instructions)", guidance.instructions]
    return blocks


def build_prompt(
    schema: LabelingSchema,
    texts: dict[str, str],
    guidance: PromptGuidance | None = None,
    examples: str = "",
) -> list[dict[str, str]]:
    """Messages asking for every target of `schema` whose texts are present in `texts`.

    `examples` is the rendered few-shot block (`fewshot.render_examples`), shown before
    the task so the model sees how this project's annotators answer.
    """
    guidance = guidance or PromptGuidance()
    used = [s for s in schema.sources if s.name in texts]
    parts = []
    answer_shape = []
    for n, target in enumerate(wanted_targets(schema, texts)):
        handler = HANDLERS[target.tag]
        on = "、".join(s.name for s in target.sources if s.name in texts)
        part = f'{n + 1}. "{target.name}"（针对文本 {on}）：{handler.instruction(target)}'
        if description := describe_target(target):
            part += f"\n   {description}"
        parts.append(part)
        answer_shape.append(f"{json.dumps(target.name, ensure_ascii=False)}: {handler.answer_format(target)}")
    language = (
        [f"文字类答案使用{guidance.language}书写 (write free-text answers in {guidance.language})。"]
        if guidance.language
        else []
    )
    user = "\n\n".join(
        [
            *_guidance_blocks(schema, guidance),
            *(["## 已标注的示例 (annotated examples)", examples] if examples else []),
            "## 待标注内容 (content)",
            *(_text_block(s, texts[s.name]) for s in used),
            "## 标注任务 (tasks)",
            "\n".join(parts),
            "## 输出格式 (output format)",
            *language,
            f'"{CONFIDENCE_KEY}" 是你对整体答案的把握程度，0 到 1 (your confidence in the whole answer, 0-1)。',
            "只输出如下 JSON 对象 (reply with this json object only):\n{"
            + ", ".join([*answer_shape, f'"{CONFIDENCE_KEY}": <0-1>'])
            + "}",
        ]
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
