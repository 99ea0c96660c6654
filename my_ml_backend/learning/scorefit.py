"""The prediction score as the chance a task is all right, fitted on the project's own annotations.

Why: the task score ranks but is not a probability: a small model is sure of many entity
lists that miss one, and how sure a model is of its wrong answers differs per model and per
project (docs/decisions.md, "Scores fitted per project"). The
leave-one-out predictions `FEWSHOT_EXAMPLES=auto` already makes on annotated tasks say,
for each, its score and whether it was all right. Platt scaling (a logistic curve on
the score's log-odds, Platt 1999) turns those pairs into a map at no extra call.

The map is monotone (slope >= `MIN_SLOPE` > 0): the order the Data Manager sorts by
never changes, only what the number means. Two parameters, because a project's sample
is small (`FEWSHOT_EVAL_CALLS` 60 judges about 15 tasks per form); isotonic regression
would need far more. Platt's smoothed targets keep the curve finite when the sample is
all right or all wrong.

A score that is already calibrated (single choices, after contextual calibration) only
gets noise from a 15-task fit. So the map is
kept only when, leave-one-out on the same sample, it beats the raw score's Brier score
by `MARGIN`; otherwise the raw score stays.

The same judged regions also set a region cut (`fit_cut`) for list answers: where the
model invents (a small model fills entity types a sentence lacks), the regions under some
score are mostly wrong on the project's own annotations, and a pre-label that is mostly
wrong costs the annotator more than a gap. Where low-scored regions are as often right,
no cut is set (docs/decisions.md, "A region cut fitted per project").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Self

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit
from scipy.stats import binomtest

logger = logging.getLogger(__name__)

MIN_PAIRS = 10  # fewer judged tasks: the raw score stays
MIN_GROUPS = 4  # regions from fewer judged tasks than this: the raw scores stay (one task's regions are one case)
MARGIN = 0.1  # the map's leave-one-out Brier score must be this much (relative) below the raw score's
# Weight of a Gaussian prior on (a, b) around (1, 0), the map that changes nothing: 15 judged tasks move the curve
# less than 200 do; the smallest weight with which no fit made a score worse.
PRIOR = 0.5
MIN_SLOPE = 0.1  # a score that does not rank on the sample still orders the tasks
EPS = 1e-4  # scores are clipped to [EPS, 1 - EPS] before their log-odds
CUTS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # region cuts tried: 0.50 ... 0.95
CUT_ALPHA = 0.05  # under a cut, wrong regions must outnumber right ones beyond chance (one-sided binomial test)


def _logodds(scores: np.ndarray | float) -> np.ndarray:
    return logit(np.clip(scores, EPS, 1 - EPS))


class _Stored:
    """A frozen dataclass kept as a dict in the project's stored evaluation (`autotune.FewShotEvaluation`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, raw: Any) -> Self | None:
        """The stored dict back, or None when it is missing or from another shape."""
        try:
            return cls(**raw) if isinstance(raw, dict) else None
        except TypeError:
            return None


@dataclass(frozen=True)
class ScoreMap(_Stored):
    """P(task all right) = expit(a * logit(score) + b), for the predictions of one `version`."""

    a: float
    b: float
    n: int  # judged tasks it was fitted on
    right: int  # of which all right
    version: str  # the zero-shot model_version whose scores it was fitted on

    def __call__(self, score: float) -> float:
        return round(float(expit(self.a * _logodds(score) + self.b)), 4)


def brier(pairs: Sequence[tuple[float, bool]], weights: Sequence[float] | None = None) -> float:
    """Mean squared error of the score as P(right), optionally weighted: what a map must lower to be kept."""
    return float(np.average([(s - r) ** 2 for s, r in pairs], weights=weights))


def fit(
    pairs: Sequence[tuple[float, bool]],
    version: str,
    weights: Sequence[float] | None = None,
    groups: Sequence[int] | None = None,
) -> ScoreMap | None:
    """The score map of `(score, right)` pairs, or None: below `MIN_PAIRS`, or no clear gain.

    `weights`: how many of the project's tasks each judged one stands for (the sample is
    label-stratified, so a rare label's tasks are over-represented). The gain is judged
    leave-one-out: each pair mapped by a curve fitted on the others; with `groups` (a
    region's task), leave-one-task-out, since one task's regions share its text and doubt.
    """
    group = np.arange(len(pairs)) if groups is None else np.asarray(groups)
    if len(pairs) < MIN_PAIRS or len(set(group.tolist())) < MIN_GROUPS:
        return None
    w = np.ones(len(pairs)) if weights is None else np.asarray(weights, dtype=float)
    found = platt(pairs, version, w)
    loo = list(pairs)  # each pair's score mapped by the curve fitted without its group, in place
    for g in np.unique(group):
        out = group == g
        without = platt([p for p, o in zip(pairs, out, strict=True) if not o], version, w[~out])
        for i in np.flatnonzero(out):
            loo[i] = (without(pairs[i][0]), pairs[i][1])
    raw, mapped = brier(pairs, w), brier(loo, w)
    if mapped >= (1 - MARGIN) * raw:
        logger.info("分数校准未采用 (score map not used): on %d judged scores it does not beat the raw score "
                    "(Brier %.3f raw, %.3f mapped, leave-one-out)", len(pairs), raw, mapped)
        return None
    return found


def platt(pairs: Sequence[tuple[float, bool]], version: str, w: np.ndarray) -> ScoreMap:
    """Platt scaling: minimises the weighted log loss against Platt's targets, (right + 1) / (right + 2)
    for right answers and 1 / (wrong + 2) for wrong ones, plus `PRIOR`, with the slope kept >= MIN_SLOPE."""
    x = _logodds(np.array([float(s) for s, _ in pairs]))
    y = np.array([bool(r) for _, r in pairs])
    pos, neg = float(w[y].sum()), float(w[~y].sum())
    t = np.where(y, (pos + 1) / (pos + 2), 1 / (neg + 2))

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        z = a * x + b
        residual = w * (expit(z) - t)
        value = np.sum(w * (np.logaddexp(0, z) - t * z)) + PRIOR * ((a - 1) ** 2 + b**2)
        return float(value), np.array([residual @ x + 2 * PRIOR * (a - 1), residual.sum() + 2 * PRIOR * b])

    found = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(MIN_SLOPE, None), (None, None)])
    a, b = (float(v) for v in found.x)
    return ScoreMap(round(a, 4), round(b, 4), len(pairs), int(y.sum()), version)


@dataclass(frozen=True)
class RegionCut(_Stored):
    """A list answer's regions scored under `below` are left out: on the judged annotations of `version`'s
    predictions, `wrong` regions under it were not the annotators' and `right` were."""

    below: float
    right: int
    wrong: int
    version: str


def fit_cut(pairs: Sequence[tuple[float, bool]], version: str, groups: Sequence[int]) -> RegionCut | None:
    """The region cut of judged `(score, right)` pairs (`groups`: each one's task), or None.

    Of the cuts in `CUTS`, those under which wrong regions outnumber right ones beyond chance
    (binomial test, `CUT_ALPHA`), from at least `MIN_GROUPS` tasks (one task's regions share its
    text and doubt); of these, the one that leaves out the most wrong regions net of right ones.
    """
    best: RegionCut | None = None
    for below in CUTS:
        under = [(right, g) for (score, right), g in zip(pairs, groups, strict=True) if score < below]
        right = sum(r for r, _ in under)
        wrong = len(under) - right
        if wrong <= right or len({g for r, g in under if not r}) < MIN_GROUPS:
            continue
        if binomtest(wrong, len(under), 0.5, alternative="greater").pvalue >= CUT_ALPHA:
            continue
        if best is None or wrong - right > best.wrong - best.right:
            best = RegionCut(below, right, wrong, version)
    return best
