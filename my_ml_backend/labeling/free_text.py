"""The free-text answer: a one-line instruction, the text, and the reply matched to the closest choice.

This is how Label Studio's llm_interactive example asks: no JSON, no schema, no confidence to report. Where
a small model's JSON answer collapses onto one label, its plain answer can be the better one; which of the
two a project gets is measured on its annotations (`predicting.form_evaluation`). It applies to configs
that ask one single-choice `<Choices>`; every other config is asked for JSON.

The reader is pure: the reply's first line matched to a choice (`controls.matching.closest_value`: a
near miss, an alias, a choice named in a sentence), else the whole reply, else the choice most similar by
spelling, as llm_interactive does, scored by that similarity so it is reviewed first. A reply that shares
no character with any choice gets no pre-label.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Sequence

from .answers import TaskAnswer
from .controls.base import listed
from .controls.choices import aliases_of, is_single_choice
from .controls.matching import closest_value, normalize
from .prompts import PromptGuidance, prompt_language
from .results import build_results
from .schema import LabelingSchema, Target
from .scoring import Tokens

logger = logging.getLogger(__name__)

_MARKUP = "*#>_`-•· \t"


def free_text_target(wanted: Sequence[Target]) -> Target | None:
    """The one single-choice `<Choices>` a free-text answer can fill, or None when the task asks anything else."""
    if len(wanted) != 1:
        return None
    target = wanted[0]
    return target if is_single_choice(target) and target.control.labels else None


def free_text_prompt(target: Target, texts: dict[str, str], guidance: PromptGuidance) -> list[dict[str, str]]:
    """One user message: the project's instructions (if any), the categories in the listed order, the text."""
    names = [s.name for s in target.sources if s.name in texts]
    body = texts[names[0]] if len(names) == 1 else "\n\n".join(f"{n}: {texts[n]}" for n in names)
    ask = f"Classify the text into one of these categories: {', '.join(listed(target))}.\n\nText: {body}"
    extra = [guidance.instructions] if guidance.instructions else []
    if guidance.language:
        extra.append(f"Write free-text answers in {guidance.language}.")
    return [{"role": "user", "content": "\n\n".join([*extra, ask])}]


def first_line(reply: str) -> str:
    """The reply's first line with words, without list or emphasis marks."""
    for line in reply.splitlines():
        if stripped := line.strip().strip(_MARKUP).strip():
            return stripped
    return ""


def matched_choice(reply: str, target: Target) -> tuple[str, float] | None:
    """The choice the reply names and how literally (1.0: the first line is the choice itself), or None."""
    allowed = listed(target)
    line = first_line(reply)
    aliases = aliases_of(target)
    for said in dict.fromkeys((line, reply)):  # a one-line reply is matched once
        if said and (value := closest_value(said, allowed, aliases)):
            return value, _similarity(line, value)
    if not line:
        return None
    # llm_interactive's rule: the choice most similar by spelling, however little; but a reply sharing no
    # character with any choice would only pick the first listed, which is a guess, not an answer
    best = max(allowed, key=lambda v: difflib.SequenceMatcher(None, normalize(line), normalize(v)).ratio())
    similarity = _similarity(line, best)
    return (best, similarity) if similarity > 0 else None


def _similarity(said: str, value: str) -> float:
    return round(difflib.SequenceMatcher(None, normalize(said), normalize(value)).ratio(), 4)


def line_probability(tokens: Tokens) -> float | None:
    """P(the reply's first line): the product of its tokens' probabilities, where logprobs came back."""
    logprobs: list[float] = []
    for token in tokens or ():
        if "\n" in token[0] and logprobs:
            break
        logprobs.append(token[1])
    return math.exp(sum(logprobs)) if logprobs else None


def read_free_text(
    schema: LabelingSchema, texts: dict[str, str], target: Target, reply: str, tokens: Tokens
) -> TaskAnswer:
    """The task's answer in a free-text reply: one validated choice scored by how literally and surely it was
    named (the similarity, times P(first line) with logprobs), or no region when nothing is close."""
    found = matched_choice(reply, target)
    if found is None:
        logger.debug("Choices %s: nothing in the reply %r to match to %s", target.name, reply[:200], listed(target))
        return TaskAnswer([], 0.0, 0.0, prompt_language(texts))
    value, similarity = found
    sure = line_probability(tokens)
    score = round(similarity * (sure if sure is not None else 1.0), 4)
    regions, _ = build_results(schema, {target.name: value}, texts, lambda _target, _value: score)
    return TaskAnswer(regions, score if regions else 0.0, 1.0 if regions else 0.0, prompt_language(texts))
