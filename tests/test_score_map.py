"""The score map fitted on a project's judged tasks (`learning.scorefit`): monotone, calibrated, bounded."""

from __future__ import annotations

import random

import pytest

from my_ml_backend.labeling.answers import TaskAnswer
from my_ml_backend.labeling.calibration import ScoreMaps, calibrate_answer
from my_ml_backend.learning.autotune import FewShotEvaluation, Judged, fit_maps, stratum_weights
from my_ml_backend.learning.examples import Example, region_pairs
from my_ml_backend.learning.scorefit import MIN_PAIRS, ScoreMap, fit
from my_ml_backend.predicting.factory import schema_for


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


def test_region_pairs_are_judged_task_by_task() -> None:
    """Twelve overconfident regions: from twelve tasks they make a map; from two tasks they are two cases, too
    few; and the gain is judged leaving a whole task out, so a task's regions never vouch for each other."""
    pairs = overconfident(12, 5)
    assert fit(pairs, "v", groups=list(range(12))) is not None
    assert fit(pairs, "v", groups=[0] * 6 + [1] * 6) is None
    assert fit(pairs, "v", groups=[i // 3 for i in range(12)]) is not None  # four tasks of three regions


def test_a_stored_map_applies_only_to_the_version_it_was_fitted_on() -> None:
    found = fit(overconfident(20, 3), "model-a-1234")
    assert found is not None
    stored = FewShotEvaluation(form="0", score_map=found.to_dict(), region_maps={"ner": found.to_dict()})
    choice = FewShotEvaluation.loads(stored.dumps())
    assert choice is not None and choice.fitted("model-a-1234") == ScoreMaps(found, {"ner": found})
    assert choice.fitted("model-b-5678") is None  # another model, prompt or config: its scores mean other things
    # stored before maps existed
    assert FewShotEvaluation.loads('{"form": "0", "samples": 3}').fitted("model-a-1234") is None
    regions_only = FewShotEvaluation.loads(FewShotEvaluation(form="0", region_maps={"ner": found.to_dict()}).dumps())
    assert regions_only is not None and regions_only.fitted("model-a-1234") == ScoreMaps(None, {"ner": found})
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


NER = """<View><Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
<Choices name="topic" toName="text"><Choice value="work"/><Choice value="other"/></Choices>
<Text name="text" value="$text"/></View>"""


def span(start: int, end: int, text: str, label: str, score: float) -> dict:
    value = {"start": start, "end": end, "text": text, "labels": [label]}
    return {"from_name": "ner", "to_name": "text", "type": "labels", "value": value, "score": score}


def test_each_predicted_region_is_judged_against_the_annotators_answer() -> None:
    schema = schema_for(NER)
    results = [
        span(0, 4, "Anna", "PER", 0.97),  # the annotator has it
        span(13, 17, "Acme", "PER", 0.91),  # the right words, the wrong type
        span(22, 28, "Monday", "ORG", 0.88),  # invented
        {"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": ["work"]}, "score": 0.6},
        {"from_name": "ner", "to_name": "text", "type": "labels", "value": {"start": 0, "end": 4}},  # no score
    ]
    answers = {"ner": [{"label": "PER", "text": "Anna"}, {"label": "ORG", "text": "Acme"}], "topic": "work"}
    assert region_pairs(schema, results, answers) == [
        ("ner", 0.97, True), ("ner", 0.91, False), ("ner", 0.88, False), ("topic", 0.6, True)
    ]
    # An annotator who marked no entity: every predicted one is wrong; a choice they left empty is too.
    assert [right for *_, right in region_pairs(schema, results[:4], {})] == [False] * 4
    # Multiple choices are one region: right when it holds the annotator's set, not a part of it.
    multi = schema_for(NER.replace('<Choices name="topic"', '<Choices name="topic" choice="multiple"'))
    both = [{"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": ["other", "work"]},
             "score": 0.5}]
    assert region_pairs(multi, both, {"topic": ["work", "other"]}) == [("topic", 0.5, True)]
    assert region_pairs(multi, both, {"topic": ["work"]}) == [("topic", 0.5, False)]
    part = [{**both[0], "value": {"choices": ["work"]}}]
    assert region_pairs(multi, part, {"topic": ["work", "other"]}) == [("topic", 0.5, False)]


def test_a_control_whose_regions_are_overconfident_gets_a_map_and_a_calibrated_one_does_not() -> None:
    """Entity spans said at 0.95 and right 40 % of the time (a small model inventing names where types are
    absent) get a map; the same tasks' choices, right exactly as often as said, keep their raw scores."""
    rng = random.Random(7)
    judged = []
    for _ in range(30):
        spans = [("ner", rng.uniform(0.9, 0.99), rng.random() < 0.4) for _ in range(2)]
        p = rng.uniform(0.3, 1.0)
        judged.append((Judged(False, 0.9, [*spans, ("topic", p, rng.random() < p)]), "same label"))

    class Index:  # one label: every weight 1
        schema = None

        def shown(self) -> list[Example]:
            return [Example(i, {"text": str(i)}, {"topic": "work"}) for i in range(30)]

    task, regions, cuts = fit_maps(judged, Index(), "v")  # type: ignore[arg-type]
    assert set(regions) == {"ner"} and cuts == {}  # no config: no control known to answer with a list
    assert 0.25 < regions["ner"](0.95) < 0.55  # about 0.4, less the prior's pull
    assert task is not None and task(0.9) < 0.3  # no task was all right


def test_calibrate_answer_maps_the_task_score_from_the_raw_regions_then_the_regions() -> None:
    """The task map was fitted on task scores made of raw region scores: it is applied to the task score
    before the region map changes the regions, and a control without a map keeps its regions' scores."""
    prediction = TaskAnswer([span(0, 4, "Anna", "PER", 0.9)], 0.9, 1.0, "en")
    other = TaskAnswer([{"from_name": "topic", "value": {"choices": ["work"]}, "score": 0.7}], 0.7, 1.0, "en")
    maps = ScoreMaps(task=lambda s: round(s / 2, 4), regions={"ner": lambda s: round(s / 3, 4)})
    prediction, other = calibrate_answer(prediction, maps=maps), calibrate_answer(other, maps=maps)
    assert prediction.score == 0.45 and prediction.regions[0]["score"] == 0.3
    assert other.score == 0.35 and other.regions[0]["score"] == 0.7
