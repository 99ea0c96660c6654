"""Single choices decided on the model's whole distribution, with its own bias divided out.

Why (measured, bench/RESULTS.md): a small model favours a slot of the list it was shown
(Qwen2.5-0.5B gave the 2nd of 5 topics 42 % of its probability on average, whatever label
sat there), and its sampled answer is the argmax of that skewed distribution. With token
logprobs the top alternatives at the answer's first token give the probability of every
choice. Contextual calibration (Zhao et al. 2021, arXiv:2102.09690) asks the same prompt
about content-free texts ("N/A", "[MASK]", ...): what the model answers for no content is its
bias. `STRENGTH` of that prior is divided out, the answer is the calibrated argmax and the
region score its calibrated probability.

Content-free rather than the batch's own mean (Batch Calibration): the batch mean also holds
the batch's true label skew (most reviews positive), and dividing it out pushed answers to
the rare labels (measured: -4 to -16 points on batches 80 % one class); the content-free
prior does not depend on the batch at all. It costs `len(CONTENT_FREE[lang])` calls once per
config, prompt language and model (cached), and only where logprobs come back, i.e. on
endpoints that are not metered per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .controls.base import ordered
from .prompts import prompt_language
from .schema import Target
from .scoring import path_distribution, value_start

STRENGTH = 0.5  # exponent of the divided-out prior: 0 = raw distribution, 1 = full calibration
SHRINK = 0.2  # share of uniform mixed into the content-free prior: a choice it never names is not infinite
# Content-free texts per prompt language (each must be detected as that language: `prompt_language`).
CONTENT_FREE = {"en": ("N/A", "[MASK]", "nothing"), "zh": ("无", "空白", "暂无内容")}
PRIVATE_KEY = "_calibration"  # what a prediction carries until its batch is settled; never sent


@dataclass(frozen=True)
class ScoreMaps:
    """The project's fitted score maps (`learning.scorefit`): the task score's, per control its regions', and per
    list control the raw region score under which its regions are left out (`scorefit.fit_cut`)."""

    task: Callable[[float], float] | None = None
    regions: Mapping[str, Callable[[float], float]] = field(default_factory=dict)
    cuts: Mapping[str, float] = field(default_factory=dict)


def choice_distribution(tokens: Sequence[tuple], key: str, allowed: Sequence[str]) -> list[float] | None:
    """P(choice) over `allowed` from the alternatives along the answer after `"key":`, or None.

    Mostly its first token decides; where choices share their first tokens the answer is read
    on until one is left (`scoring.path_distribution`), so such label sets are calibrated too.
    """
    at = value_start("".join(t[0] for t in tokens), key)
    return None if at is None else path_distribution(tokens, at, allowed)


def content_free_prior(distributions: Sequence[Sequence[float]], shrink: float = SHRINK) -> list[float]:
    """The mean distribution over the content-free answers, mixed with `shrink` of uniform."""
    k = len(distributions[0])
    return [(1 - shrink) * sum(d[j] for d in distributions) / len(distributions) + shrink / k for j in range(k)]


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


Priors = dict[tuple[str, str], list[float]]  # (control, prompt language) -> content-free prior


def content_free_priors(
    languages: set[str], data_keys: list[str], answer: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> Priors:
    """Each language's prior per control: `answer` (one unsettled prediction, or None) on its content-free texts."""
    priors: Priors = {}
    for lang in sorted(languages):
        found: dict[str, list[Sequence[float]]] = {}
        for i, text in enumerate(CONTENT_FREE.get(lang, ())):
            prediction = answer({"id": f"content-free-{lang}-{i}", "data": dict.fromkeys(data_keys, text)}) or {}
            private = prediction.get(PRIVATE_KEY) or {}
            if private.get("lang") != lang:  # another language's scaffolding: not this prompt's bias
                continue
            for name, (_, dist) in private.get("choices", {}).items():
                found.setdefault(name, []).append(dist)
        priors.update({(name, lang): content_free_prior(dists) for name, dists in found.items()})
    return priors


def carry(prediction: dict, targets: Sequence[Target], tokens: Sequence[tuple], texts: dict, coverage: float) -> None:
    """Attach what `settle` needs (choice distributions, prompt language, coverage) to a new prediction.

    `coverage`: what the regions' mean is multiplied by, the share of controls answered times
    P(the list answers are complete) (`scoring.completeness`), so a re-score keeps both.
    """
    if choices := distributions(targets, tokens, prediction["result"]):
        prediction[PRIVATE_KEY] = {"lang": prompt_language(texts), "coverage": coverage, "choices": choices}


def _under_cut(region: dict[str, Any], cuts: Mapping[str, float]) -> bool:
    score, cut = region.get("score"), cuts.get(str(region.get("from_name")))
    return cut is not None and isinstance(score, (int, float)) and score < cut


def settle(
    predictions: list[dict[str, Any]], priors: Priors | None = None, maps: ScoreMaps | None = None
) -> list[dict[str, Any]]:
    """Calibrate single-choice answers in place with `priors`; strip the private key from every item;
    then map every answered prediction's score, and its regions' scores, with the project's `maps`.

    The task map was fitted on task scores made of raw region scores, so regions are mapped last;
    a list control's regions under its cut go first, on their raw scores (what the cut was fitted on).
    The task score keeps the doubt of a region cut out: the task still sorts among those to review.

    A prediction carries `{PRIVATE_KEY: {"lang", "coverage", "choices": {control: [allowed, dist]}}}`
    from `Predictor.finish_task`. With a prior for its control and language, the answer becomes
    the calibrated argmax, its region score the calibrated probability; without one, the
    distribution is used as it is. The prediction score is then the regions' mean × coverage.
    """
    for prediction in predictions:
        private = prediction.pop(PRIVATE_KEY, None)
        if not private or not private.get("choices"):
            continue
        for name, (allowed, dist) in private["choices"].items():
            prior = (priors or {}).get((name, private["lang"]))
            calibrated = calibrate(dist, prior) if prior and len(prior) == len(dist) else list(dist)
            best = max(range(len(allowed)), key=calibrated.__getitem__)
            for region in prediction["result"]:
                if region.get("from_name") == name:
                    region["value"]["choices"] = [allowed[best]]
                    region["score"] = round(calibrated[best], 4)
        scores = [r["score"] for r in prediction["result"] if "score" in r]
        if scores:
            prediction["score"] = round(sum(scores) / len(scores) * private["coverage"], 4)
    for prediction in predictions if maps is not None else ():
        if maps.cuts and isinstance(prediction.get("result"), list):
            prediction["result"] = [r for r in prediction["result"] if not _under_cut(r, maps.cuts)]
        if maps.task is not None and "result" in prediction and isinstance(prediction.get("score"), (int, float)):
            prediction["score"] = maps.task(prediction["score"])
        for region in prediction.get("result") or ():
            region_map = maps.regions.get(region.get("from_name"))
            if region_map is not None and isinstance(region.get("score"), (int, float)):
                region["score"] = region_map(region["score"])
    for prediction in predictions:
        for item in (prediction, *(r for r in prediction.get("result") or () if isinstance(r, dict))):
            if isinstance(item.get("score"), (int, float)):
                item["score"] = bounded(item["score"])
    return predictions


def bounded(score: float) -> float:
    """A score Label Studio accepts: within [0, 1], and 0 (review first) for NaN.

    An endpoint's logprobs are not ours to trust: some mark a missing one with 1.0, some send
    probabilities under that name, and a NaN would make the whole reply invalid JSON.
    """
    return min(max(float(score), 0.0), 1.0) if math.isfinite(score) else 0.0
