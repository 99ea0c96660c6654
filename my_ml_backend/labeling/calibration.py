"""Single choices decided on the model's whole distribution, with its own bias divided out.

A small model favours a slot of the label list whatever label sits there, and its written answer is the
argmax of that skewed distribution. Contextual calibration (Zhao et al. 2021, arXiv:2102.09690) asks the same
prompt about content-free texts ("N/A", "[MASK]", ...): what the model answers for no content is its bias, and
`STRENGTH` of it is divided out. Content-free rather than the batch's own mean, because the batch mean also holds
the batch's true label skew (docs/decisions.md, "Calibration").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .answers import TaskAnswer

STRENGTH = 0.5  # exponent of the divided-out prior: 0 = raw distribution, 1 = full calibration
SHRINK = 0.2  # share of uniform mixed into the content-free prior: a choice it never names is not infinite
# Content-free texts per prompt language (each must be detected as that language: `prompt_language`).
CONTENT_FREE = {"en": ("N/A", "[MASK]", "nothing"), "zh": ("无", "空白", "暂无内容")}


@dataclass(frozen=True)
class ScoreMaps:
    """The project's fitted score maps (`learning.scorefit`): the task score's, per control its regions', and per
    list control the raw region score under which its regions are left out (`scorefit.fit_cut`)."""

    task: Callable[[float], float] | None = None
    regions: Mapping[str, Callable[[float], float]] = field(default_factory=dict)
    cuts: Mapping[str, float] = field(default_factory=dict)


def content_free_prior(distributions: Sequence[Sequence[float]], shrink: float = SHRINK) -> list[float]:
    """The mean distribution over the content-free answers, mixed with `shrink` of uniform."""
    k = len(distributions[0])
    return [(1 - shrink) * sum(d[j] for d in distributions) / len(distributions) + shrink / k for j in range(k)]


def calibrate(distribution: Sequence[float], prior: Sequence[float], strength: float = STRENGTH) -> list[float]:
    """`distribution` with `prior ** strength` divided out, renormalised."""
    raw = [p / max(q, 1e-9) ** strength for p, q in zip(distribution, prior, strict=True)]
    total = sum(raw)
    return [r / total for r in raw]


Priors = dict[tuple[str, str], list[float]]  # (control, prompt language) -> content-free prior


def content_free_priors(
    languages: set[str], data_keys: list[str], answer: Callable[[dict[str, Any]], TaskAnswer | None]
) -> Priors:
    """Each language's prior per control: `answer` (one uncalibrated answer, or None) on its content-free texts."""
    priors: Priors = {}
    for lang in sorted(languages):
        found: dict[str, list[Sequence[float]]] = {}
        for i, text in enumerate(CONTENT_FREE.get(lang, ())):
            got = answer({"id": f"content-free-{lang}-{i}", "data": dict.fromkeys(data_keys, text)})
            if got is None or got.language != lang:  # another language's scaffolding: not this prompt's bias
                continue
            for name, dist in got.choices.items():
                found.setdefault(name, []).append(dist.probabilities)
        priors.update({(name, lang): content_free_prior(dists) for name, dists in found.items()})
    return priors


def _under_cut(region: dict[str, Any], cuts: Mapping[str, float]) -> bool:
    score, cut = region.get("score"), cuts.get(str(region.get("from_name")))
    return cut is not None and isinstance(score, (int, float)) and score < cut


def _calibrated(answer: TaskAnswer, priors: Priors) -> tuple[list[dict[str, Any]], float]:
    """The answer's regions with each single choice decided on its calibrated distribution, and the task score.

    Without a prior for a control and language the distribution is used as it is; the task score is then
    the regions' mean times the answer's coverage.
    """
    regions = copy.deepcopy(answer.regions)
    for name, dist in answer.choices.items():
        prior = priors.get((name, answer.language))
        probabilities = list(dist.probabilities)
        calibrated = calibrate(probabilities, prior) if prior and len(prior) == len(probabilities) else probabilities
        best = max(range(len(dist.allowed)), key=calibrated.__getitem__)
        for region in regions:
            if region.get("from_name") == name:
                region["value"]["choices"] = [dist.allowed[best]]
                region["score"] = round(calibrated[best], 4)
    scores = [r["score"] for r in regions if "score" in r]
    score = round(sum(scores) / len(scores) * answer.coverage, 4) if scores else answer.score
    return regions, score


def calibrate_answer(answer: TaskAnswer, priors: Priors | None = None, maps: ScoreMaps | None = None) -> TaskAnswer:
    """The answer calibrated with `priors`, then its score and its regions' scores mapped with the project's `maps`.

    The task map was fitted on task scores made of raw region scores, so regions are mapped last;
    a list control's regions under its cut go first, on their raw scores (what the cut was fitted on).
    The task score keeps the doubt of a region cut out: the task still sorts among those to review.
    """
    if answer.choices:
        regions, score = _calibrated(answer, priors or {})
    else:
        regions, score = copy.deepcopy(answer.regions), answer.score
    if maps is not None:
        if maps.cuts:
            regions = [r for r in regions if not _under_cut(r, maps.cuts)]
        if maps.task is not None:
            score = maps.task(score)
        for region in regions:
            region_map = maps.regions.get(region.get("from_name"))
            if region_map is not None and isinstance(region.get("score"), (int, float)):
                region["score"] = region_map(region["score"])
    for region in regions:
        if isinstance(region.get("score"), (int, float)):
            region["score"] = bounded(region["score"])
    before = answer.before_extension
    calibrated = answer.with_regions(regions, bounded(score), answer.coverage)
    if before is None:
        return calibrated
    return replace(calibrated, before_extension=calibrate_answer(before, priors, maps))


def bounded(score: float) -> float:
    """A score Label Studio accepts: within [0, 1], and 0 (review first) for NaN.

    An endpoint's logprobs are not ours to trust: some mark a missing one with 1.0, some send
    probabilities under that name, and a NaN would make the whole reply invalid JSON.
    """
    return min(max(float(score), 0.0), 1.0) if math.isfinite(score) else 0.0
