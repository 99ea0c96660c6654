"""Scores that mean something: token probabilities when the endpoint gives them.

- Choice region score: with logprobs, the joint probability of the tokens that spell the
  chosen label after the control's own key (a label word inside the `_reason` does not
  stand for the answer). The product, not the geometric mean: the first token of an
  answer carries the decision and the rest are near-certain, so averaging would flatten
  the doubt. Single choices are then re-decided and re-scored by `calibration`.
- Entity region score: the geometric-mean probability of the tokens spelling the entity's
  text (a long name's many tokens must not drag it down). Entities are asked type first
  (`{"label", "text"}`), so the name's tokens are already conditioned on its type; the
  label token's own probability there is the choice of which type to list next, not a
  doubt about this entity, and is left out. From a model that writes the text first, the
  text's mean is multiplied by P(its label among the control's labels), read from the
  alternatives at the label's first token as single choices are read (without
  alternatives, the label token's own probability). This rule ranks right spans above
  wrong ones best (docs/decisions.md, "The entity region score").
- Prediction score: with logprobs, the mean region score (or, failing that, the
  whole reply's token probability) times P(complete) of each list answer (`list_complete`:
  a small model's usual entity error is a list one item short, each listed name spelled
  surely; its doubt shows only where it closed the list) times
  coverage; without logprobs, the model's own `_confidence` (0–1, asked for in the
  prompt) times coverage; if it gave none, coverage alone. Coverage is the share of the
  task's controls that got a valid answer, so an unanswered control always lowers the score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from .prompts import CONFIDENCE_KEY

# (token, logprob[, alternatives]) of a reply, as the LLM client reads them from the endpoint.
Tokens = Sequence[tuple]
_SKIP = ' \t\r\n:"['  # what may stand between a key and its value's first character
_DECODER = json.JSONDecoder()  # raw_decode: where a JSON value's text ends


def mean_probability(logprobs: Sequence[float]) -> float | None:
    """exp(mean logprob): the geometric-mean probability of a run of tokens."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else None


def token_at(tokens: Tokens, offset: int) -> int | None:
    """Index of the token holding character `offset` of the joined reply."""
    end = 0
    for i, token in enumerate(tokens):
        end += len(token[0])
        if end > offset:
            return i
    return None


def value_start(joined: str, key: str, skip: str = _SKIP) -> int | None:
    """Offset in the joined reply of the first character of the value after `"key":` (past any `skip` characters)."""
    quoted = json.dumps(key, ensure_ascii=False)
    at = joined.find(quoted)
    if at < 0:
        return None
    at += len(quoted)
    while at < len(joined) and joined[at] in skip:
        at += 1
    return at


def _begins(token: str, folded: Sequence[str]) -> list[int]:
    """The values a token can begin (its quotes and spaces aside)."""
    text = token.strip().lstrip("\"'[").rstrip("\"']},").strip().casefold()
    return [j for j, value in enumerate(folded) if value.startswith(text)] if text else []


def distribution_at(token: tuple, allowed: Sequence[str]) -> list[float] | None:
    """P(value) over `allowed` from a token's alternatives, or None.

    A token that can begin several values shares its probability between them; when the
    token the model wrote is such a token it does not decide, so None. None too without
    alternatives or when none of them begins a value.
    """
    if len(token) < 3 or not token[2]:
        return None
    folded = [str(v).casefold() for v in allowed]
    if len(_begins(token[0], folded)) > 1:
        return None
    probs = _shares(token[2], lambda text: _begins(text, folded), len(folded))
    total = sum(probs)
    return [p / total for p in probs] if total > 0 else None


def _shares(alternatives: Sequence[tuple], spells: Callable[[str], list[int]], k: int) -> list[float]:
    """Each of `k` values' probability from a token's alternatives; one that spells several shares it."""
    shares = [0.0] * k
    for text, logprob in alternatives:
        found = spells(text)
        for j in found:
            shares[j] += math.exp(logprob) / len(found)
    return shares


def _spells(text: str, written: str | None, open_: Sequence[int], folded: Sequence[str]) -> list[int]:
    """The open values `text` can spell, written after `written` (the answer so far; None: it is the first token,
    which may carry the opening quote or a space and is read as `distribution_at` reads it)."""
    if written is None:
        return [j for j in _begins(text, folded) if j in open_]
    text = written + text
    if (end := text.find('"')) >= 0:  # the string closes here: the answer is exactly what came before
        return [j for j in open_ if text[:end].casefold() == folded[j]]
    return [j for j in open_ if folded[j].startswith(text.casefold())] if text else []


def path_distribution(tokens: Tokens, at: int, allowed: Sequence[str]) -> list[float] | None:
    """P(value) over `allowed` for the answer whose first character is at offset `at` of the joined reply, or None.

    At the answer's first token it is `distribution_at`. Where the written token begins several
    values (names that share their first token: "非常好" / "非常差", "Very positive" / "Very
    negative"), the values it leaves open are read on at the next token, weighted by what the
    written one got there: P(非常) x P(好 | 非常). None when the answer ends before one value is
    left, or a token on the way has no alternatives.
    """
    i = token_at(tokens, at)
    folded = [str(v).casefold() for v in allowed]
    probs, open_, weight = [0.0] * len(folded), list(range(len(folded))), 1.0
    written: str | None = None  # the answer's text before token i; None at its first token
    while i is not None and i < len(tokens) and len(tokens[i]) >= 3 and tokens[i][2]:
        shares = _shares(tokens[i][2], lambda text, w=written, o=open_: _spells(text, w, o, folded), len(folded))
        on, total = _spells(tokens[i][0], written, open_, folded), sum(shares)
        if not on and written is None and total > 0:  # a first token that begins no value: its alternatives decide
            return [share / total for share in shares]
        if not on or total <= 0:
            return None
        for j in open_:  # a value the written token left behind gets its share here, for good
            if j not in on or len(on) == 1:
                probs[j] += weight * shares[j] / total
        if len(on) == 1:
            return [p / sum(probs) for p in probs]
        weight *= sum(shares[j] for j in on) / total
        # the first token may begin before the answer (its opening quote): only what follows `at` is the answer's
        piece = tokens[i][0] if written is not None else tokens[i][0][at - sum(len(t[0]) for t in tokens[:i]):]
        open_, written, i = on, (written or "") + piece, i + 1
    return None


def _span(tokens: Tokens, joined: str, needle: str, after: int) -> tuple[list[int], int, int] | None:
    """Indices of the tokens spelling `needle` (first found at or after `after`), and where it starts and ends."""
    start = joined.find(needle, after)
    if start < 0:
        needle = json.dumps(needle, ensure_ascii=False)[1:-1]
        start = joined.find(needle, after)
    if start < 0:
        return None
    end = start + len(needle)
    first, last = token_at(tokens, start), token_at(tokens, end - 1)
    picked = list(range(first, last + 1)) if needle and first is not None and last is not None else []
    return picked, start, end


def label_before(joined: str, label: str, after: int, start: int) -> int:
    """Where an entity's own label starts when written just before its text at `start` (type first: its own
    object, no `}` in between), searched from `after`; -1 when it was not (an earlier object's label is not it)."""
    quoted = json.dumps(label, ensure_ascii=False)
    before = joined.rfind(quoted, after, start)
    return before + 1 if before >= 0 and "}" not in joined[before:start] else -1


def answer_text(value: dict[str, Any]) -> str | None:
    """The text that spells a region's answer in the reply."""
    if "labels" in value and "text" in value:
        return str(value["text"])
    for key in ("choices", "text", "taxonomy"):
        items = value.get(key)
        while isinstance(items, list) and items:
            items = items[-1] if key == "taxonomy" else items[0]
        if isinstance(items, str) and items:
            return items[:60]
    for key in ("rating", "number", "datetime"):
        if key in value:
            return str(value[key])
    return None


def region_confidence(tokens: Tokens, value: dict[str, Any], key: str = "", labels: Sequence[str] = ()) -> float | None:
    """The region's score from the reply's tokens (see the module doc), or None without logprobs or a match.

    `labels`: the control's labels, for an entity's P(label).
    """
    needle = answer_text(value)
    if not tokens or not needle:
        return None
    joined = "".join(token[0] for token in tokens)
    after = max(0, joined.find(json.dumps(key, ensure_ascii=False))) if key else 0
    found = _span(tokens, joined, needle, after)
    if found is None or not found[0]:
        return None
    picked, start, end = found
    if not value.get("labels"):
        return math.exp(sum(tokens[i][1] for i in picked))
    text_part = mean_probability([tokens[i][1] for i in picked]) or 1.0
    label = str(value["labels"][0])
    if label_before(joined, label, after, start) >= 0:  # its own object's label, written before the text
        return text_part  # P(label) there is the choice of which type to list next, not a doubt about this one
    spelled = _span(tokens, joined, label, end)
    if not spelled or not spelled[0]:
        return text_part
    dist = distribution_at(tokens[spelled[0][0]], labels) if label in labels else None
    label_part = dist[list(labels).index(label)] if dist else math.exp(sum(tokens[i][1] for i in spelled[0]))
    return text_part * label_part


def _list_ends(joined: str, at: int) -> tuple[int | None, int | None]:
    """For the JSON list opening at `at`: the offset of its closing `]` (None when cut or not valid JSON), and of
    the `,` after its last complete item when it is cut there (a reply stopped at LLM_MAX_TOKENS)."""
    if at >= len(joined) or joined[at] != "[":
        return None, None
    try:
        return _DECODER.raw_decode(joined, at)[1] - 1, None  # raw_decode gives where the value's text ends
    except ValueError:
        pass
    comma, pos = None, at + 1
    while True:
        while pos < len(joined) and joined[pos].isspace():
            pos += 1
        try:
            pos = _DECODER.raw_decode(joined, pos)[1]
        except ValueError:
            return None, comma
        while pos < len(joined) and joined[pos].isspace():
            pos += 1
        if pos >= len(joined) or joined[pos] != ",":
            return None, comma
        comma, pos = pos, pos + 1


def _share(tokens: Tokens, joined: str, last: int, decision: int, counts: Callable[[str], bool]) -> float | None:
    """P(the character written at offset `decision`, right after the item ending at `last`, had been one that
    `counts`): the tokens from the one holding `last` to the one holding `decision` are walked, and an alternative
    that spells the same text up to the decision and then such a character adds its probability, times the
    probability of having reached that token. None without alternatives."""
    first, final = token_at(tokens, last), token_at(tokens, decision)
    if first is None or final is None:
        return None
    offset = sum(len(token[0]) for token in tokens[:first])
    reach, share, alternatives = 1.0, 0.0, False
    for token in tokens[first : final + 1]:
        before = "".join(joined[offset:decision].split())  # this token's text up to the decision, spaces aside
        for text, logprob in (token[2] if len(token) > 2 and token[2] else ()):
            alternatives = True
            spelled = "".join(text.split())
            if len(spelled) > len(before) and spelled.startswith(before) and counts(spelled[len(before)]):
                share += reach * math.exp(logprob)
        reach *= math.exp(token[1])
        offset += len(token[0])
    return min(1.0, share) if alternatives else None


def list_complete(tokens: Tokens, key: str) -> float | None:
    """P(the list under `key` is complete where the answer ends it).

    The dominant error of a small model on entities is a list one item short, written as
    surely as a right one; its doubt shows only at the list's end, where the next token
    after the last item could be `]` (stop) or `,` (one more; `{` or a value in an empty
    list): 1 - P(one more), from the alternatives there (`_share`). Without alternatives,
    the probability of the tokens written (a lower bound). A list cut by LLM_MAX_TOKENS
    (a looping model) keeps its complete items, so P(`]` instead of the `,` written after
    the last of them): the model itself would not have stopped there. None without
    tokens, or when the answer is not a list.
    """
    if not tokens:
        return None
    joined = "".join(token[0] for token in tokens)
    at = value_start(joined, key, " \t\r\n:")
    end, comma = _list_ends(joined, at) if at is not None else (None, None)
    if end is None and comma is None:
        return None
    last = (end if end is not None else comma) - 1
    while joined[last].isspace():
        last -= 1
    if end is None:
        return _share(tokens, joined, last, comma, lambda char: char == "]")
    empty = last == at
    more = _share(tokens, joined, last, end, lambda char: char != "]" and (empty or char == ","))
    if more is not None:
        return max(0.0, 1.0 - more)
    first, final = token_at(tokens, last), token_at(tokens, end)
    if first is None or final is None:
        return None
    return math.prod(math.exp(token[1]) for token in tokens[first : final + 1])


def self_reported(answers: dict[str, Any]) -> float | None:
    value = answers.get(CONFIDENCE_KEY)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number > 1 and number <= 100:  # "85" meaning 85 %
        number /= 100
    return number if 0 <= number <= 1 else None


def prediction_score(tokens: Tokens, region_scores: list[float], coverage: float, answers: dict[str, Any]) -> float:
    """The task's score (module doc); `coverage`: the share of controls answered times `completeness`."""
    if tokens:
        whole = mean_probability([token[1] for token in tokens])
        base = sum(region_scores) / len(region_scores) if region_scores else whole
    else:
        base = self_reported(answers)
    return round((base if base is not None else 1.0) * coverage, 4)


def completeness(tokens: Tokens, answers: dict[str, Any], names: Sequence[str]) -> float:
    """P(every list answer of `names` is complete): the product of their `list_complete` (1 without tokens)."""
    lists = [list_complete(tokens, name) for name in names if isinstance(answers.get(name), list)]
    return math.prod(p for p in lists if p is not None)
