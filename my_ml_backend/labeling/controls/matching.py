"""Match the model's wording to the exact values a config allows.

Models answer "Positive", "正面情感", "「正面」" or "positive " where the config says
"positive"; only exact config values may leave the backend, so every candidate is
normalised and matched (`match_value`). Where no grammar holds the model to the list, it also
writes near misses ("Sport", "Technology", "The article is about business", a label's alias):
`closest_value` maps those to the one value they are close to, and to none when no value is
close or two are equally close.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

_QUOTES = "\"'`“”‘’「」『』《》【】[]()（）"


def normalize(value: str) -> str:
    """NFKC (full-width to half-width), case-folded, without quotes, brackets and spaces."""
    text = unicodedata.normalize("NFKC", value).casefold()
    text = text.strip().strip(_QUOTES + " .。,，;；:：!！").strip()
    return " ".join(text.split())


def match_value(candidate: str, allowed: list[str]) -> str | None:
    """The allowed value `candidate` means, or None when it names none of them."""
    if candidate in allowed:
        return candidate
    norm = normalize(candidate)
    if not norm:
        return None
    by_norm = {normalize(a): a for a in allowed}
    if norm in by_norm:
        return by_norm[norm]
    # "正面情感" -> "正面": exactly one allowed value inside the answer (or vice versa).
    contained = [a for n, a in by_norm.items() if n and (n in norm)]
    if len(contained) == 1:
        return contained[0]
    close = difflib.get_close_matches(norm, list(by_norm), n=1, cutoff=0.85)
    return by_norm[close[0]] if close else None


# A near miss by spelling alone (difflib ratio), above what unrelated words of similar length reach
# ("weather" / "other" 0.67) and ahead of the runner-up, so one slip never maps to a coin toss.
SIMILAR = 0.75
AHEAD = 0.1
MIN_STEM = 3  # "tech" in "technology", "sport" of "sports": stems this long or longer, never "a" of "art"
_WORD = re.compile(r"\w+")
_HINT_PARTS = re.compile(r"\s*[/,;，、；]\s*")


def _is_latin(text: str) -> bool:
    return all(ch.isascii() for ch in text)


def _mentions(norm: str, value: str) -> int | None:
    """Where `value` (normalised) is first named in `norm`: whole words (or a word's stem) in Latin text,
    any substring in CJK text; None when it is not."""
    if not value:
        return None
    if not _is_latin(value):
        at = norm.find(value)
        return at if at >= 0 else None
    words = value.split()
    tokens = list(_WORD.finditer(norm))
    for i, token in enumerate(tokens):
        found = [t.group() for t in tokens[i : i + len(words)]]
        if found == words or (len(words) == 1 and _stem_of(found[0], words[0])):
            return token.start()
    return None


def _stem_of(word: str, value: str) -> bool:
    """One is the other's stem: "sport" / "sports", "tech" / "technology"."""
    short, long = sorted((word, value), key=len)
    return len(short) >= MIN_STEM and long.startswith(short)


def closest_value(candidate: str, allowed: Sequence[str],
                  aliases: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """The allowed value a near-miss answer means, or None when none is close or two are equally close.

    In order: a value's alias or hint named exactly; the value named first in the answer (as a word,
    a word's stem, or inside CJK text); then spelling alone (difflib ratio >= SIMILAR and AHEAD of
    the runner-up).
    """
    norm = normalize(candidate)
    if not norm:
        return None
    for value in allowed:
        names = [n for alias in (aliases or {}).get(value, ()) for n in _HINT_PARTS.split(normalize(alias))]
        if norm in names:
            return value
    named = {value: at for value in allowed if (at := _mentions(norm, normalize(value))) is not None}
    if named:
        first = min(named.values())
        at_first = [v for v, at in named.items() if at == first]
        return at_first[0] if len(at_first) == 1 else None
    ratios = sorted(((difflib.SequenceMatcher(None, norm, normalize(v)).ratio(), v) for v in allowed), reverse=True)
    if ratios and ratios[0][0] >= SIMILAR and (len(ratios) == 1 or ratios[0][0] - ratios[1][0] >= AHEAD):
        return ratios[0][1]
    return None


def as_list(answer: Any) -> list[str]:
    """An answer as a list of strings: "a", ["a", "b"], "a, b" or {"choices": [...]}."""
    if answer is None:
        return []
    if isinstance(answer, dict):
        for key in ("choices", "labels", "value", "values", "answer", "text"):
            if key in answer:
                return as_list(answer[key])
        return []
    if isinstance(answer, (list, tuple)):
        out: list[str] = []
        for item in answer:
            out.extend(as_list(item))
        return out
    return [str(answer)]
