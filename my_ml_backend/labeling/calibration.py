"""Single choices decided on the model's whole distribution, with the batch's own bias divided out.

Why (measured, bench/RESULTS.md): a small model favours a slot of the list it was shown
(Qwen2.5-0.5B gave the 2nd of 5 topics 42 % of its probability on average, whatever label
sat there), and its sampled answer is the argmax of that skewed distribution. With token
logprobs the top alternatives at the answer's first token give the probability of every
choice. Batch Calibration (Zhou et al. 2023, arXiv:2309.17249) estimates the bias as the
batch's mean distribution and divides it out; the answer is the calibrated argmax and the
region score its calibrated probability. No extra call, and the score ranks (AUROC) and is
calibrated (ECE) far better than the sampled token's own probability.

The mean is shrunk towards uniform by `PSEUDO_TASKS`, so a batch of one task is left
almost as it is, and only `STRENGTH` of the bias is divided out: a batch whose true labels
are skewed (most reviews positive) also shows that skew in its mean, and dividing it all
out would push answers towards the rare labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .controls.base import ordered
from .schema import Target

PSEUDO_TASKS = 2.0  # weight of the uniform prior in the batch mean, in tasks
STRENGTH = 0.5  # exponent of the divided-out mean: 0 = raw distribution, 1 = full batch calibration
PRIVATE_KEY = "_calibration"  # what a prediction carries until its batch is settled; never sent
_SKIP = ' \t\r\n:"['


def answer_token(tokens: Sequence[tuple], key: str) -> int | None:
    """Index of the token holding the first character of the value after `"key":` in the reply."""
    joined = "".join(t[0] for t in tokens)
    at = joined.find(json.dumps(key, ensure_ascii=False))
    if at < 0:
        return None
    at += len(json.dumps(key, ensure_ascii=False))
    while at < len(joined) and joined[at] in _SKIP:
        at += 1
    offset = 0
    for i, token in enumerate(tokens):
        offset += len(token[0])
        if offset > at:
            return i
    return None


def _choices_of(token: str, folded: list[str]) -> list[int]:
    """The choices a token can begin (its quotes and spaces aside)."""
    text = token.strip().lstrip("\"'[").rstrip("\"']},").strip().casefold()
    return [j for j, value in enumerate(folded) if text and value.startswith(text)] if text else []


def choice_distribution(tokens: Sequence[tuple], key: str, allowed: Sequence[str]) -> list[float] | None:
    """P(choice) over `allowed` from the alternatives at the answer's first token, or None.

    A token that can begin several choices shares its probability between them; when the
    token the model wrote is such a token the first token does not decide, so None.
    """
    i = answer_token(tokens, key)
    if i is None or len(tokens[i]) < 3 or not tokens[i][2]:
        return None
    folded = [str(v).casefold() for v in allowed]
    if len(_choices_of(tokens[i][0], folded)) > 1:
        return None
    probs = [0.0] * len(folded)
    for text, logprob in tokens[i][2]:
        hits = _choices_of(text, folded)
        for j in hits:
            probs[j] += math.exp(logprob) / len(hits)
    total = sum(probs)
    return [p / total for p in probs] if total > 0 else None


def batch_prior(distributions: Sequence[Sequence[float]], pseudo: float = PSEUDO_TASKS) -> list[float]:
    """The batch's mean distribution, shrunk towards uniform by `pseudo` tasks."""
    k = len(distributions[0])
    return [(sum(d[j] for d in distributions) + pseudo / k) / (len(distributions) + pseudo) for j in range(k)]


def calibrate(distribution: Sequence[float], prior: Sequence[float], strength: float = STRENGTH) -> list[float]:
    """`distribution` with `prior ** strength` divided out, renormalised."""
    raw = [p / max(q, 1e-9) ** strength for p, q in zip(distribution, prior, strict=True)]
    total = sum(raw)
    return [r / total for r in raw]


def distributions(targets: Sequence[Target], tokens: Sequence[tuple], results: list[dict]) -> dict[str, list]:
    """`{control: [allowed, distribution]}` for each answered single-choice control the logprobs cover."""
    answered = {r.get("from_name") for r in results}
    out: dict[str, list] = {}
    for target in targets:
        if target.tag != "choices" or target.control.attr.get("choice") == "multiple" or target.name not in answered:
            continue
        allowed = ordered(target.control.labels or [])
        if tokens and (dist := choice_distribution(tokens, target.name, allowed)) is not None:
            out[target.name] = [allowed, dist]
    return out


def settle(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calibrate the batch's single-choice answers in place; strip the private key from every item.

    A prediction carries `{PRIVATE_KEY: {"coverage": c, "choices": {control: [allowed, dist]}}}`
    from `Predictor.finish_task`. Each control's answer becomes the calibrated argmax, its
    region score the calibrated probability, and the prediction score their mean × coverage.
    """
    by_control: dict[str, list[Sequence[float]]] = {}
    for prediction in predictions:
        for name, (_, dist) in (prediction.get(PRIVATE_KEY) or {}).get("choices", {}).items():
            by_control.setdefault(name, []).append(dist)
    priors = {name: batch_prior(dists) for name, dists in by_control.items()}
    for prediction in predictions:
        private = prediction.pop(PRIVATE_KEY, None)
        if not private or not private.get("choices"):
            continue
        for name, (allowed, dist) in private["choices"].items():
            calibrated = calibrate(dist, priors[name])
            best = max(range(len(allowed)), key=calibrated.__getitem__)
            for region in prediction["result"]:
                if region.get("from_name") == name:
                    region["value"]["choices"] = [allowed[best]]
                    region["score"] = round(calibrated[best], 4)
        scores = [r["score"] for r in prediction["result"] if "score" in r]
        if scores:
            prediction["score"] = round(sum(scores) / len(scores) * private["coverage"], 4)
    return predictions
