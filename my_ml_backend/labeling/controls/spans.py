"""Find the entity mentions a model names in the exact task text.

Models cannot count characters, so they name the entity text and we compute the
offsets. Python string indices are code points, which is what Label Studio uses for
Text offsets, so emoji and other astral characters before an entity are safe. Every
span returned satisfies `text[start:end] == mention`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    label: str

    def text_in(self, text: str) -> str:
        return text[self.start : self.end]


def occurrences(text: str, mention: str) -> list[int]:
    """Start offsets of `mention` in `text`: exact first, then ignoring case."""
    found = _find_all(text, mention)
    if not found:
        folded_text, folded_mention = text.casefold(), mention.casefold()
        # Case folding can change lengths ("ß" -> "ss"); only trust it when it does not.
        if len(folded_text) == len(text) and len(folded_mention) == len(mention):
            found = _find_all(folded_text, folded_mention)
    return found


def _find_all(text: str, mention: str) -> list[int]:
    starts, i = [], text.find(mention)
    while i != -1:
        starts.append(i)
        i = text.find(mention, i + 1)
    return starts


def locate(text: str, mention: str, label: str, hint: int | None = None) -> list[Span]:
    """Spans for one named entity: every mention, or the one nearest the model's offset hint."""
    mention = mention.strip()
    if not mention:
        return []
    starts = occurrences(text, mention)
    if not starts:
        logger.debug("Entity %r (%s) is not in the text: dropped", mention, label)
        return []
    if hint is not None:
        starts = [min(starts, key=lambda s: abs(s - hint))]
    return [Span(s, s + len(mention), label) for s in starts]


def resolve_overlaps(spans: list[Span]) -> list[Span]:
    """Drop duplicates and, among overlapping spans of the same label, keep the longest.

    Overlaps between different labels are kept: Label Studio allows them and they are
    often both right ("北京大学" as ORG containing "北京" as LOC).
    """
    kept: list[Span] = []
    for span in sorted(set(spans), key=lambda s: (-(s.end - s.start), s.start)):
        if any(k.label == span.label and k.start < span.end and span.start < k.end for k in kept):
            continue
        kept.append(span)
    return sorted(kept)
