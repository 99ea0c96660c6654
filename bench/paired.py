"""Paired comparisons of two systems on the same items: intervals that say whether a difference is real.

Accuracy and accuracy differences are resampled by items (percentile bootstrap, fixed seed), so two
systems are always judged on the same resampled items; McNemar's discordant counts (b: only the first
right, c: only the second right) and its exact two-sided p-value (a binomial test on b of b + c) say the
same thing without resampling. Pooled figures resample within each set, so each set keeps its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

RESAMPLES = 2000
SEED = 0


def accuracy_interval(right: Sequence[bool], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the share of right items."""
    r = np.asarray(right, dtype=float)
    if not len(r):
        return (0.0, 0.0)
    picks = np.random.default_rng(seed).integers(0, len(r), (resamples, len(r)))
    low, high = np.percentile(r[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class Paired:
    """`first` − `second` on the same items."""

    n: int
    difference: float  # accuracy points as a share (0.05 = 5 points)
    low: float
    high: float
    only_first: int  # McNemar's b: items only the first got right
    only_second: int  # McNemar's c
    p_value: float

    @property
    def settled(self) -> str:
        """'better' / 'worse' when the interval excludes zero, else 'no difference shown'."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no difference shown"

    def describe(self) -> str:
        return (f"{self.difference * 100:+.1f} pts [{self.low * 100:+.1f}, {self.high * 100:+.1f}] "
                f"(McNemar {self.only_first} vs {self.only_second}, p={self.p_value:.3f}; n={self.n}): {self.settled}")


def paired(first: Sequence[Sequence[bool]], second: Sequence[Sequence[bool]], resamples: int = RESAMPLES,
           seed: int = SEED) -> Paired:
    """First − second over one or several sets (each a list of per-item right/wrong, same items in both).

    Several sets: items are resampled within each set and the difference is that of the pooled items.
    """
    if len(first) != len(second) or any(len(a) != len(b) for a, b in zip(first, second, strict=True)):
        raise ValueError("paired comparison needs the same items on both sides")
    rng = np.random.default_rng(seed)
    a_sets = [np.asarray(a, dtype=float) for a in first]
    b_sets = [np.asarray(b, dtype=float) for b in second]
    n = sum(len(a) for a in a_sets)
    totals = np.zeros(resamples)
    for a, b in zip(a_sets, b_sets, strict=True):
        if len(a):
            picks = rng.integers(0, len(a), (resamples, len(a)))
            totals += (a - b)[picks].sum(axis=1)
    low, high = np.percentile(totals / max(n, 1), [2.5, 97.5])
    a_all, b_all = np.concatenate(a_sets or [np.zeros(0)]), np.concatenate(b_sets or [np.zeros(0)])
    only_a, only_b = int(((a_all == 1) & (b_all == 0)).sum()), int(((a_all == 0) & (b_all == 1)).sum())
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return Paired(n, float((a_all - b_all).mean()) if n else 0.0, float(low), float(high), only_a, only_b, float(p))


def adoption(per_set: dict[str, Paired], pooled: Paired) -> str:
    """The team's rule: win pooled with the interval above zero, and lose on no set beyond its interval."""
    losing = [name for name, p in per_set.items() if p.high < 0]
    if losing:
        return f"reject: loses on {', '.join(losing)}"
    if pooled.low > 0:
        return "adopt: wins pooled, loses on no set"
    if pooled.high < 0:
        return "reject: loses pooled"
    return "not shown: the pooled interval spans zero"
