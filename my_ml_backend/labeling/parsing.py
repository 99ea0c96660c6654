"""Read the model's reply as `{control name: answer}`, tolerating how models really write.

Models wrap JSON in code fences, add a sentence before or after it, use Chinese
quotes or full-width punctuation, or answer a single question in plain text. The
parser recovers the answers where it can and returns nothing where it cannot; it
never invents an answer.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FULLWIDTH = str.maketrans({"“": '"', "”": '"', "：": ":", "，": ",", "｛": "{", "｝": "}", "［": "[", "］": "]"})


def _candidates(text: str) -> list[str]:
    """Substrings worth trying as JSON, most likely first."""
    out = [m.strip() for m in _FENCE.findall(text)]
    out.append(text.strip())
    start = text.find("{")
    while start != -1:
        end = _matching_brace(text, start)
        if end != -1:
            out.append(text[start : end + 1])
        start = text.find("{", start + 1)
    return out


def _matching_brace(text: str, start: int) -> int:
    depth, in_str, escape = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _loads(candidate: str) -> dict[str, Any] | None:
    for attempt in (candidate, candidate.translate(_FULLWIDTH)):
        try:
            value = json.loads(attempt)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_reply(text: str, control_names: list[str], extras: tuple[str, ...] = ()) -> dict[str, Any]:
    """Answers keyed by control name (and `extras` keys); unknown keys are ignored, missing ones absent.

    With a single control, a reply that is not JSON is taken as that control's answer
    (plain-text mode), so a model that ignores the format still yields a label.
    """
    text = _THINK.sub("", text).strip()
    for candidate in _candidates(text):
        obj = _loads(candidate)
        if obj is None:
            continue
        if not any(k in obj for k in control_names) and len(obj) == 1 and len(control_names) == 1:
            obj = {control_names[0]: next(iter(obj.values()))}  # {"label": "x"} for a lone control
        answers = {k: v for k, v in obj.items() if k in control_names}
        if answers:
            return answers | {k: obj[k] for k in extras if k in obj}
        lowered = {k.casefold().strip(): v for k, v in obj.items() if isinstance(k, str)}
        answers = {n: lowered[n.casefold()] for n in control_names if n.casefold() in lowered}
        if answers:
            return answers
    if len(control_names) == 1 and text and not text.lstrip().startswith("{"):
        return {control_names[0]: _FENCE.sub(lambda m: m.group(1), text).strip()}
    return {}
