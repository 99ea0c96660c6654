"""Chat messages for one task: a system part per config, a user part per task, one JSON answer for all.

One call per task covers every control of the task (ModelScope's free tier counts
calls), and the reply is a single JSON object keyed by control name so that the
parser can tie every answer to its control. The system part (`system_prompt`) holds
everything that depends only on the config and the project, so it is identical for
every task (a prefix servers can reuse, and that several tasks can share); the user
part (`task_prompt`) holds the task's examples and text, last. Both speak the task
text's language (`prompt_language`). Allowed values are listed one per line with their
hints, never as an array to copy from, which small models copy a position of.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from .controls import HANDLERS
from .controls.base import Lang, listed
from .controls.textarea import result_texts
from .schema import LabelingSchema, Target, TextSource

CONFIDENCE_KEY = "_confidence"
REASON_KEY = "_reason"  # LLM_REASONING=on: a short reason, written before the answers

logger = logging.getLogger(__name__)

# Bump when the wording changes: it is part of model_version, so Label Studio re-predicts.
PROMPT_VERSION = "6"

# The prompt's scaffolding in each language it speaks (`prompt_language` picks one per task).
WORDS: dict[Lang, dict[str, str]] = {
    "en": {
        "role": "You are a careful data-annotation assistant pre-labelling data for Label Studio.",
        "task": "## Task description",
        "instructions": "## Project instructions",
        "fields": "## Fields to fill in\nRead the whole text first, then fill in:",
        "about": "for",
        "note": "Note: ",
        "format": "## Output format",
        "output": "Reply with one JSON object and nothing else:",
        "reason_shape": '"<one short sentence>"',
        "reason": f'"{REASON_KEY}": first, in one short sentence, what the text is about and why your answers fit.',
        "confidence": f'"{CONFIDENCE_KEY}": how likely your whole answer is right, from 0 to 1.',
        "language": "Write free-text answers in {language}.",
        "examples": "## Annotated examples",
        "text": "Text",
    },
    "zh": {
        "role": "你是一个专业、严谨的数据标注助手，为 Label Studio 做预标注。",
        "task": "## 任务说明",
        "instructions": "## 项目要求",
        "fields": "## 需要填写的字段\n先读完全文，再填写：",
        "about": "针对文本",
        "note": "说明：",
        "format": "## 输出格式",
        "output": "只输出一个 JSON 对象，不要输出其他文字：",
        "reason_shape": '"<一句简短的理由>"',
        "reason": f'"{REASON_KEY}"：先用一句话说明文本讲了什么、为什么这样标注。',
        "confidence": f'"{CONFIDENCE_KEY}"：你的整体答案正确的可能性，0 到 1。',
        "language": "文字类答案使用 {language} 书写。",
        "examples": "## 已标注的示例",
        "text": "文本",
    },
}


@dataclass(frozen=True)
class PromptGuidance:
    """What the project adds to the generic prompt: its instructions and output language.

    Set per project (Label Studio's ML "extra params"), by environment or prompt file;
    an interactive request may add the annotator's own instruction.
    """

    instructions: str = ""
    language: str = ""
    reasoning: bool = False  # LLM_REASONING: a short reason before the answers

    def fingerprint(self) -> str:
        """Part of `model_version`: other guidance, other answers."""
        if not (self.instructions or self.language or self.reasoning):
            return ""
        if not self.reasoning:
            return json.dumps([self.instructions, self.language], ensure_ascii=False)
        return json.dumps([self.instructions, self.language, "reasoning"], ensure_ascii=False)

    def with_instruction(self, extra: str) -> PromptGuidance:
        extra = extra.strip()
        if not extra:
            return self
        joined = f"{self.instructions}\n{extra}" if self.instructions else extra
        return replace(self, instructions=joined)

def project_params(extra_params: Any) -> dict[str, Any]:
    """A project's ML "extra params" as a dict: a JSON object as it is, plain text as its instructions."""
    if isinstance(extra_params, str):
        text = extra_params.strip()
        try:
            extra_params = json.loads(text) if text.startswith("{") else {"instructions": text}
        except ValueError:
            extra_params = {"instructions": text}
    return extra_params if isinstance(extra_params, dict) else {}


def guidance_from_params(base: PromptGuidance, extra_params: Any) -> PromptGuidance:
    """The project's guidance: Label Studio's ML "extra params" on top of the global one.

    Accepted: `{"instructions": "...", "language": "English", "reasoning": "on"}` (also
    `prompt` and `output_language`), or plain text, taken as instructions. Project
    instructions are added after the global ones (LLM_INSTRUCTIONS / PROMPT_FILE); a
    project language or reasoning switch replaces the global one.
    """
    extra_params = project_params(extra_params)
    if not extra_params:
        return base
    instructions = extra_params.get("instructions") or extra_params.get("prompt") or ""
    language = extra_params.get("language") or extra_params.get("output_language") or ""
    guidance = base.with_instruction(str(instructions))
    if str(language).strip():
        guidance = replace(guidance, language=str(language).strip())
    if (reasoning := extra_params.get("reasoning")) is not None:
        guidance = replace(guidance, reasoning=str(reasoning).strip().lower() in ("1", "true", "yes", "on"))
    return guidance


def context_instruction(schema: LabelingSchema, context: Any) -> str:
    """The annotator's instruction in an interactive request (a `prompt` TextArea's text).

    The context is the client's to shape: parts that are not what Label Studio sends are
    skipped (the tasks are still predicted), never a 500.
    """
    if not isinstance(context, dict) or not schema.prompt_controls:
        return ""
    results = context.get("result")
    texts = []
    for result in results if isinstance(results, list) else ():
        if not isinstance(result, dict) or not isinstance(name := result.get("from_name"), str):
            continue
        value = result.get("value")
        text = value.get("text") if name in schema.prompt_controls and isinstance(value, dict) else None
        texts += [str(t) for t in result_texts(text) if str(t).strip()]
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


def prompt_language(texts: dict[str, str]) -> Lang:
    """"zh" when the task's text is mostly Chinese, else "en": the prompt speaks the text's language.

    Counted on letters only (CJK ideographs vs Latin letters), so digits, code and
    punctuation do not decide; Chinese packs more per character, hence the low threshold.
    """
    cjk = latin = 0
    for text in texts.values():
        for ch in text:
            if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf":
                cjk += 1
            elif ch.isascii() and ch.isalpha():
                latin += 1
    return "zh" if cjk and cjk >= 0.25 * (cjk + latin) else "en"


def wanted_targets(schema: LabelingSchema, texts: dict[str, str]) -> list[Target]:
    """The targets a task can be asked about: those with at least one of its texts present."""
    return [t for t in schema.targets if any(s.name in texts for s in t.sources)]


def answer_schema(
    schema: LabelingSchema, texts: dict[str, str], reasoning: bool = False, confidence: bool = True
) -> dict[str, Any]:
    """A lean JSON Schema of the reply: `_reason` first when asked, one property per control, `_confidence`."""
    targets = wanted_targets(schema, texts)
    properties: dict[str, Any] = {REASON_KEY: {"type": "string"}} if reasoning else {}
    properties |= {t.name: HANDLERS[t.tag].json_schema(t) for t in targets}
    if confidence:
        properties[CONFIDENCE_KEY] = {"type": "number", "minimum": 0, "maximum": 1}
    required = ([REASON_KEY] if reasoning else []) + [t.name for t in targets]
    return {"type": "object", "properties": properties, "required": required}


def _control_hint(target: Target) -> str:
    """The config's own description of a control (its `hint`): the cheapest accuracy gain there is."""
    return str(target.control.attr.get("hint") or "").strip()


def system_prompt(
    schema: LabelingSchema,
    targets: list[Target],
    present: list[str],
    guidance: PromptGuidance,
    lang: Lang,
    confidence: bool = True,
) -> str:
    """What does not depend on the task's text: role, project guidance, fields, label sets, format.

    Kept apart from the task part so that it is the same for every task of a project
    (servers reuse a common prefix; several tasks can share it) and so that the model
    has read every allowed value before it sees the text and answers. `confidence`:
    ask for the self-reported `_confidence` (only needed where no logprobs come back).
    """
    w = WORDS[lang]
    parts = [w["role"]]
    if schema.headers:
        parts.append(w["task"] + "\n" + "\n".join(schema.headers))
    if guidance.instructions:
        parts.append(w["instructions"] + "\n" + guidance.instructions)
    fields = []
    for n, target in enumerate(targets, start=1):
        on = ", ".join(s.name for s in target.sources if s.name in present)
        line = f'{n}. "{target.name}" ({w["about"]} {on}): {HANDLERS[target.tag].instruction(target, lang)}'
        if hint := _control_hint(target):
            line += f"\n   {w['note']}{hint}"
        fields.append(line)
    parts.append(w["fields"] + "\n" + "\n".join(fields))
    shape = [f"{json.dumps(REASON_KEY)}: {w['reason_shape']}"] if guidance.reasoning else []
    shape += [
        f"{json.dumps(t.name, ensure_ascii=False)}: {HANDLERS[t.tag].answer_format(t, lang)}" for t in targets
    ]
    if confidence:
        shape.append(f'"{CONFIDENCE_KEY}": <0-1>')
    output = [w["output"], "{" + ", ".join(shape) + "}"]
    if guidance.reasoning:
        output.append(w["reason"])
    if confidence:
        output.append(w["confidence"])
    if guidance.language:
        output.append(w["language"].format(language=guidance.language))
    parts.append(w["format"] + "\n" + "\n".join(output))
    return "\n\n".join(parts)


def task_prompt(sources: list[TextSource], texts: dict[str, str], lang: Lang, examples: str = "") -> str:
    """The part that changes per task: the annotated examples chosen for it, then its text(s)."""
    w = WORDS[lang]
    parts = [w["examples"] + "\n" + examples] if examples else []
    for source in sources:
        parts.append(f"{w['text']} {source.name}:\n<<<\n{texts[source.name]}\n>>>")
    return "\n\n".join(parts)


def build_prompt(
    schema: LabelingSchema,
    texts: dict[str, str],
    guidance: PromptGuidance | None = None,
    examples: str = "",
    confidence: bool = True,
) -> list[dict[str, str]]:
    """Messages asking for every target of `schema` whose texts are present in `texts`.

    A system part (the config's questions, in the text's language) and a user part (the
    task). `examples` is the rendered few-shot block (`retrieval.render_examples`), shown
    before the task's text so the model sees how this project's annotators answer.
    `confidence`: ask for a self-reported `_confidence` (off where logprobs score the answer).
    """
    guidance = guidance or PromptGuidance()
    lang = prompt_language(texts)
    sources = [s for s in schema.sources if s.name in texts]
    targets = wanted_targets(schema, texts)
    system = system_prompt(schema, targets, [s.name for s in sources], guidance, lang, confidence)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": task_prompt(sources, texts, lang, examples)},
    ]


def labels_reversed(schema: LabelingSchema, names: Collection[str]) -> LabelingSchema:
    """`schema` with the labels of the controls `names` listed from the other end: the prompt of a second opinion
    that a model favouring one end of a list answers with the opposite pull."""
    targets = tuple(replace(t, listed_order=tuple(reversed(listed(t)))) if t.name in names else t
                    for t in schema.targets)
    return replace(schema, targets=targets)
