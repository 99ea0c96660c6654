"""Match the model's wording to the exact values a config allows.

Models answer "Positive", "正面情感", "「正面」" or "positive " where the config says
"positive"; only exact config values may leave the backend, so every candidate is
normalised and matched, and anything that matches no value is dropped.
"""

from __future__ import annotations

import difflib
import unicodedata
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
