"""Prepare a task: its texts, the controls asked, its one-task call and the reader of its reply.

No call is made here. A task without text fails alone with a clear error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..labeling import packing
from ..labeling.answers import TaskAnswer, read_answer
from ..labeling.free_text import free_text_prompt, free_text_target, read_free_text
from ..labeling.prompts import PromptGuidance, answer_schema, build_prompt, read_texts, wanted_targets
from ..labeling.schema import LabelingSchema, Target
from ..learning.retrieval import FewShotExamples
from ..llm.errors import no_text
from ..llm.packed import Ask
from ..llm.replies import ChatReply

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptInputs:
    """What every prompt of a batch adds to its task's texts: guidance and the examples it may show."""

    guidance: PromptGuidance = field(default_factory=PromptGuidance)
    examples: FewShotExamples | None = None


@dataclass
class PreparedTask:
    """A task ready to ask: its texts, the controls asked, its one-task call, and the reader of its reply."""

    task: dict[str, Any]
    schema: LabelingSchema
    texts: dict[str, str]
    wanted: list[Target]
    ask: Ask
    inputs: PromptInputs = field(default_factory=PromptInputs)  # what its prompt was built with, to ask it again
    confidence: bool = True
    free_text: Target | None = None  # the single choice asked for a plain answer (LLM_ANSWER_STRATEGY), or JSON
    _last: tuple[ChatReply, TaskAnswer] | None = None

    @property
    def tokens(self) -> int:
        """The task's own size in tokens (packs are sized by it)."""
        return packing.estimate_tokens("\n".join(self.texts.values()))

    def read(self, reply: ChatReply) -> TaskAnswer:
        """The reply read into this task's answer; the same reply is read once (the cache check reads it first)."""
        if self._last is not None and self._last[0] is reply:
            return self._last[1]
        if self.free_text is not None:
            answer = read_free_text(self.schema, self.texts, self.free_text, reply.text, reply.tokens)
        else:
            answer = read_answer(self.schema, self.texts, self.wanted, reply.text, reply.tokens)
        self._last = (reply, answer)
        return answer


def prepare_task(
    schema: LabelingSchema,
    task: dict[str, Any],
    inputs: PromptInputs,
    max_chars: int,
    confidence: bool,
    free_text: bool = False,
) -> PreparedTask:
    """The task's texts and its one-task call; raises `PredictionError` when it has no text.

    `confidence`: ask the model for a self-reported confidence (only where no logprobs come back).
    `free_text`: ask a single-choice task for a plain answer, llm_interactive's way (other tasks: JSON).
    """
    data = task.get("data") or {}
    if not isinstance(data, dict):  # Label Studio's task data is an object; anything else holds no field
        raise no_text(schema.data_keys)
    texts, truncated = read_texts(schema, data, max_chars)
    if not texts:
        raise no_text(schema.data_keys)
    for name in truncated:
        logger.warning("任务 %s 的文本 %s 超过 %d 字符，已截断 (text truncated to MAX_INPUT_CHARS)",
                       task.get("id"), name, max_chars)
    return _ready(schema, task, texts, inputs, confidence, free_text)


def prepared_under(prepared: PreparedTask, schema: LabelingSchema) -> PreparedTask:
    """The same task asked under another schema of its config (a second opinion's label order), from the texts
    already read."""
    return _ready(schema, prepared.task, prepared.texts, prepared.inputs, prepared.confidence,
                  prepared.free_text is not None)


def plain_askable(prepared: PreparedTask) -> bool:
    """A task asked for JSON that a plain answer could fill (one single-choice `<Choices>`)."""
    return prepared.free_text is None and free_text_target(prepared.wanted) is not None


def asked_plain(prepared: PreparedTask) -> PreparedTask:
    """The same task asked the plain way (`labeling.free_text`); one that is not `plain_askable` comes back as
    `_ready` builds it, asked for JSON."""
    return _ready(prepared.schema, prepared.task, prepared.texts, prepared.inputs, prepared.confidence, True)


def _ready(
    schema: LabelingSchema,
    task: dict[str, Any],
    texts: dict[str, str],
    inputs: PromptInputs,
    confidence: bool,
    free_text: bool = False,
) -> PreparedTask:
    wanted = wanted_targets(schema, texts)
    plain = free_text_target(wanted) if free_text else None
    if plain is not None:  # zero-shot: llm_interactive shows no examples
        ask = Ask(free_text_prompt(plain, texts, inputs.guidance), None)
    else:
        if inputs.examples is not None:
            messages = inputs.examples.messages(schema, texts, inputs.guidance, task.get("id"), confidence)
        else:
            messages = build_prompt(schema, texts, inputs.guidance, confidence=confidence)
        ask = Ask(messages, answer_schema(schema, texts, inputs.guidance.reasoning, confidence))
    logger.debug("Task %s fields: %s", task.get("id"), {k: len(v) for k, v in texts.items()})
    logger.debug("Task %s prompt%s:\n%s", task.get("id"), " (free text)" if plain else "", ask.messages[-1]["content"])
    prepared = PreparedTask(task, schema, texts, wanted, ask, inputs, confidence, plain)
    ask.accept = lambda reply: prepared.read(reply).answered  # only a reply with a valid result is worth caching
    return prepared
