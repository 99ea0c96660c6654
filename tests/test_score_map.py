"""The score map fitted on a project's judged tasks (`learning.scorefit`): monotone, calibrated, bounded."""

from __future__ import annotations

import random

import pytest

from my_ml_backend.learning.autotune import Choice, stratum_weights
from my_ml_backend.learning.examples import Example
from my_ml_backend.learning.scorefit import MIN_PAIRS, ScoreMap, fit


def ece(pairs: list[tuple[float, bool]], bins: int = 10) -> float:
    total = 0.0
    for b in range(bins):
        inside = [(s, r) for s, r in pairs if b / bins <= s < (b + 1) / bins or (b == bins - 1 and s == 1)]
        if inside:
            total += len(inside) / len(pairs) * abs(sum(r for _, r in inside) / len(inside)
                                                    - sum(s for s, _ in inside) / len(inside))
    return total


def overconfident(n: int, seed: int) -> list[tuple[float, bool]]:
    """Scores in 0.7-1.0 that rank (higher: more often right) but say far more than the truth."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        score = rng.uniform(0.7, 1.0)
        pairs.append((score, rng.random() < (score - 0.7) / 0.3 * 0.6))  # right 0-60 %, said 70-100 %
    return pairs


def test_a_map_fitted_on_one_sample_calibrates_another_and_keeps_the_order() -> None:
    train, test = overconfident(15, 1), overconfident(400, 2)  # a project's 15 judged tasks; its next 400
    found = fit(train, "v1")
    assert found is not None and found.n == 15 and found.a > 0
    mapped = [(found(s), r) for s, r in test]
    assert ece(test) > 0.5 and ece(mapped) < ece(test) / 2  # 15 pairs, and the prior: roughly, not exactly
    ordered = sorted(test)
    assert [found(s) for s, _ in ordered] == sorted(found(s) for s, _ in ordered)  # monotone: same sort order


def test_the_map_is_finite_on_an_all_right_or_all_wrong_sample_and_never_reverses_the_order() -> None:
    right = fit([(0.9, True)] * 20, "v")
    wrong = fit([(0.9, False)] * 20, "v")
    assert right is not None and wrong is not None
    assert 0.9 < right(0.9) < 1 and 0 < wrong(0.9) < 0.2  # Platt's targets: (20+1)/(20+2), 1/(20+2)
    many = fit([(0.9, False)] * 200, "v")
    assert many is not None and many(0.9) < wrong(0.9)  # the prior weighs less against more evidence
    backwards = fit([(0.2, True), (0.9, False)] * 10, "v")  # scores that rank the wrong way on the sample
    assert backwards is not None and backwards.a > 0 and backwards(0.9) > backwards(0.2)


def test_too_few_pairs_leave_the_raw_score() -> None:
    assert fit([(0.9, True)] * (MIN_PAIRS - 1), "v") is None


def test_a_stored_map_applies_only_to_the_version_it_was_fitted_on() -> None:
    found = fit(overconfident(20, 3), "model-a-1234")
    assert found is not None
    choice = Choice.loads(Choice(form="0", score_map=found.to_dict()).dumps())
    assert choice is not None and choice.fitted("model-a-1234") == found
    assert choice.fitted("model-b-5678") is None  # another model, prompt or config: its scores mean other things
    assert Choice.loads('{"form": "0", "samples": 3}').fitted("model-a-1234") is None  # stored before maps existed
    assert ScoreMap.from_dict({"a": 1}) is None
    assert found(0.5) == pytest.approx(found(0.5))


def test_a_score_that_is_already_calibrated_is_left_alone() -> None:
    """Single choices after contextual calibration: a 15-task fit would only add noise, so no map is kept."""
    kept = 0
    for seed in range(20):
        rng = random.Random(seed)
        scores = [rng.uniform(0.4, 1.0) for _ in range(15)]
        kept += fit([(s, rng.random() < s) for s in scores], "v") is not None  # right exactly as often as said
    assert kept <= 3, kept
    assert fit(overconfident(15, 1), "v") is not None  # the overconfident score of the first test is mapped


def test_a_label_stratified_sample_is_weighted_back_to_the_projects_own_label_shares() -> None:
    """The evaluation judges labels in turn: on a project of 90 % easy positives and 10 % hard negatives its
    sample is half and half, and an unweighted map would say 0.5 of every positive answer."""
    class Index:  # what `stratum_weights` reads of an ExampleIndex
        schema = None

        def shown(self) -> list[Example]:
            return [Example(i, {"text": str(i)}, {"s": "pos" if i % 10 else "neg"}) for i in range(100)]

    labels = ['{"s": "pos"}', '{"s": "neg"}'] * 10
    weights = stratum_weights(Index(), labels)  # type: ignore[arg-type]
    assert weights[:2] == pytest.approx([0.9 / 0.5, 0.1 / 0.5])
    pairs = [(0.3, True), (0.3, False)] * 10  # the model says 0.3 of both; positives right, negatives wrong
    unweighted = fit(pairs, "v")
    assert unweighted is None or unweighted(0.3) < 0.6  # the sample's accuracy (0.5), or the raw score
    assert fit(pairs, "v", weights)(0.3) > 0.75  # type: ignore[misc]  # 0.9, less the prior's pull on 20 tasks
