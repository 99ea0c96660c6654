"""Few-shot forms: which annotated examples a task is shown, and how they enter the prompt.

A form is a number of examples and a style:
- `block-K`: the K most similar examples, diverse in answers (first the most similar of
  each distinct answer, so a 9-to-1 label imbalance does not become 3-to-0), in one
  "annotated examples" block of the user message, most similar first;
- `chat-K`: the same examples as earlier chat turns (the example's own prompt as a user
  turn, the annotator's answer as the assistant's), most similar last, nearest the task;
- `per-label-M`: the M most similar examples of every label, as chat turns, most similar
  last: the prompt is label-balanced whatever the pool's balance, so a small model is
  not pushed towards the label it saw most (`labels-M` is its older name, still read);
- `0`: no example (zero-shot).
All stay within a character budget (about one token per CJK character), so examples
never crowd out the task itself, and never show the task itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..labeling.prompts import PromptGuidance, build_prompt
from ..labeling.schema import LabelingSchema
from .examples import Example
from .index import ExampleIndex, diverse_choice

STYLES = ("block", "chat", "per-label")
OLD_STYLE_NAMES = {"labels": "per-label"}  # stored evaluations, FEWSHOT_FORM values and model versions still say it


@dataclass(frozen=True)
class FewShotForm:
    """How many examples and in which style; `FewShotForm(0)` is zero-shot."""

    k: int = 0
    style: str = "block"

    def __post_init__(self) -> None:
        object.__setattr__(self, "style", OLD_STYLE_NAMES.get(self.style, self.style))

    @property
    def name(self) -> str:
        return "0" if self.k <= 0 else f"{self.style}-{self.k}"

    @classmethod
    def parse(cls, name: str) -> FewShotForm:
        """`0`, `3` (block), `block-3`, `chat-3` or `per-label-1` (also its old name `labels-1`)."""
        name = name.strip().lower()
        style, _, k = name.rpartition("-")
        style = OLD_STYLE_NAMES.get(style, style)
        if not style and k.isdigit():
            return cls(int(k), "block") if int(k) else cls()
        if style not in STYLES or not k.isdigit():
            raise ValueError(f"unknown few-shot form {name!r} (0, K, block-K, chat-K or per-label-M)")
        return cls(int(k), style) if int(k) else cls()


def choose(index: ExampleIndex | None, texts: dict[str, str], form: FewShotForm, budget_chars: int,
           task_id: int | None = None) -> list[Example]:
    """The examples `form` shows for a task, in prompt order."""
    if index is None or form.k <= 0:
        return []
    if form.style == "per-label":
        chosen, used = [], 0
        for hit in index.per_label(texts, form.k, exclude_task=task_id):  # best first: the least similar
            if used + hit.size <= budget_chars:  # are dropped when over budget
                chosen.append(hit.example)
                used += hit.size
        return chosen[::-1]
    chosen = diverse_choice(index.ranked(texts, exclude_task=task_id), form.k, budget_chars)
    return chosen if form.style == "block" else chosen[::-1]


def render_examples(examples: Sequence[Example]) -> str:
    """The examples block of the user prompt: each text followed by its correct answer."""
    blocks = []
    for n, example in enumerate(examples, start=1):
        texts = "\n".join(f"{name}: <<<{text}>>>" for name, text in example.texts.items())
        answer = json.dumps(example.answers, ensure_ascii=False)
        blocks.append(f"示例 {n} (example {n})\n{texts}\n答案 (answer): {answer}")
    return "\n\n".join(blocks)


def fewshot_messages(schema: LabelingSchema, texts: dict[str, str], guidance: PromptGuidance, form: FewShotForm,
                     examples: Sequence[Example], confidence: bool = True) -> list[dict[str, str]]:
    """The chat messages for a task with `examples` shown in `form`'s style."""
    if form.style != "block" and examples:
        turns: list[dict[str, str]] = []
        for example in examples:
            shown = {name: text for name, text in example.texts.items() if name in texts} or example.texts
            turns.append(build_prompt(schema, shown, guidance, confidence=confidence)[-1])
            turns.append({"role": "assistant", "content": json.dumps(example.answers, ensure_ascii=False)})
        system, *task = build_prompt(schema, texts, guidance, confidence=confidence)
        return [system, *turns, *task]
    return build_prompt(schema, texts, guidance, render_examples(examples), confidence)


@dataclass(frozen=True)
class FewShotExamples:
    """What a batch's prompts may show: the project's index, the form and the character budget."""

    index: ExampleIndex | None
    form: FewShotForm
    budget_chars: int

    def messages(
        self, schema: LabelingSchema, texts: dict[str, str], guidance: PromptGuidance, task_id: Any = None,
        confidence: bool = True,
    ) -> list[dict[str, str]]:
        """The task's messages with its examples (never the task itself, by id or text)."""
        own = int(task_id) if isinstance(task_id, int) or (isinstance(task_id, str) and task_id.isdigit()) else None
        shown = choose(self.index, texts, self.form, self.budget_chars, own)
        return fewshot_messages(schema, texts, guidance, self.form, shown, confidence)

    @classmethod
    def of_pool(cls, pool: Sequence[Example], form: FewShotForm, budget_chars: int) -> FewShotExamples:
        """FewShotExamples from a plain list of examples (the evaluation command's leave-one-out pool)."""
        return cls(ExampleIndex.from_examples(pool), form, budget_chars)


class ExampleSource(Protocol):
    """Where a predictor gets the examples a batch may show (read once per batch)."""

    def for_batch(self) -> FewShotExamples | None: ...


@dataclass(frozen=True)
class FixedExamples:
    """The same examples for every batch (benchmarks, the evaluation command)."""

    fixed: FewShotExamples | None

    def for_batch(self) -> FewShotExamples | None:
        return self.fixed
