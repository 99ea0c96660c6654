"""The region cut fitted on a project's judged regions (`scorefit.fit_cut`) and its use in `calibrate_answer`."""

from __future__ import annotations

from my_ml_backend.labeling.answers import TaskAnswer
from my_ml_backend.labeling.calibration import ScoreMaps, calibrate_answer
from my_ml_backend.learning.autotune import FewShotEvaluation, Judged, fit_maps
from my_ml_backend.learning.examples import Example
from my_ml_backend.learning.scorefit import RegionCut, fit_cut
from my_ml_backend.predicting.factory import build_predictor, schema_for
from my_ml_backend.settings import load_settings
from my_ml_backend.versioning import model_version
from tests.conftest import TEST_KEY

NER_AND_TOPIC = """<View><Text name="text" value="$text"/>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
  <Choices name="topic" toName="text"><Choice value="work"/><Choice value="other"/></Choices>
</View>"""


def cut_of(per_task: list[list[tuple[float, bool]]]) -> RegionCut | None:
    """`fit_cut` of judged regions given task by task."""
    pairs = [p for task in per_task for p in task]
    return fit_cut(pairs, "v", [i for i, task in enumerate(per_task) for _ in task])


def test_the_cut_is_where_wrong_regions_outnumber_right_ones_beyond_chance() -> None:
    # 15 tasks: a sure right name (0.98) and an invention scored 0.6-0.9 in each (types absent).
    tasks = [[(0.98, True), (0.6 + 0.02 * i, False)] for i in range(15)]
    cut = cut_of(tasks)
    assert cut == RegionCut(0.9, 0, 15, "v")  # every invention is under 0.9, no right name; of equal cuts the lower
    # Full sentences: the low-scored regions are as often right as wrong: no cut.
    mixed = [[(0.98, True), (0.7, i % 2 == 0)] for i in range(15)]
    assert cut_of(mixed) is None
    # Four wrong regions, none right, under 0.8: not beyond chance (p = 0.0625) - session 18's full sentences.
    few = [[(0.97, True), (0.75, False)] for _ in range(4)] + [[(0.97, True)] for _ in range(11)]
    assert cut_of(few) is None
    # Wrong regions from fewer than 4 tasks are one or two texts' quirks, however many.
    one_task = [[(0.6, False)] * 10] + [[(0.98, True)] for _ in range(14)]
    assert cut_of(one_task) is None


def test_the_cut_with_most_wrong_left_out_net_of_right_is_chosen() -> None:
    # Under 0.75: 6 wrong. Under 0.95: 6 wrong + 5 wrong + 1 right = net 10: the higher cut wins.
    tasks = [[(0.7, False)] for _ in range(6)] + [[(0.9, False)] for _ in range(5)] + [[(0.9, True)]]
    tasks += [[(0.99, True)] for _ in range(6)]
    assert cut_of(tasks) == RegionCut(0.95, 1, 11, "v")


def test_only_list_controls_get_a_cut() -> None:
    """A single choice left out would leave the task without its answer: choices never get a cut."""
    schema = schema_for(NER_AND_TOPIC)
    judged = [(Judged(False, 0.5, [("ner", 0.98, True), ("ner", 0.7, False), ("topic", 0.7, False)]), "work")
              for _ in range(15)]

    class Index:
        def __init__(self) -> None:
            self.schema = schema

        def shown(self) -> list[Example]:
            return [Example(i, {"text": str(i)}, {"topic": "work"}) for i in range(15)]

    _, _, cuts = fit_maps(judged, Index(), "v")  # type: ignore[arg-type]
    assert set(cuts) == {"ner"} and cuts["ner"].below == 0.75 and cuts["ner"].wrong == 15


def test_calibrate_answer_leaves_out_a_list_controls_regions_under_its_cut_on_their_raw_scores() -> None:
    def span(start: int, text: str, score: float) -> dict:
        return {"from_name": "ner", "to_name": "text", "type": "labels", "score": score,
                "value": {"start": start, "end": start + len(text), "text": text, "labels": ["ORG"]}}

    choice = {"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": ["work"]}, "score": 0.5}
    answer = TaskAnswer([span(0, "Garcia PLC", 0.97), span(20, "next Tuesday", 0.88), choice], 0.6, 1.0, "en")
    maps = ScoreMaps(regions={"ner": lambda s: round(s / 2, 4)}, cuts={"ner": 0.95})
    calibrated = calibrate_answer(answer, None, maps)
    assert [r["value"].get("text") for r in calibrated.regions] == ["Garcia PLC", None]  # the choice stays
    assert calibrated.regions[0]["score"] == 0.485  # mapped after the cut, which read the raw 0.97
    assert calibrated.score == 0.6  # the task keeps the doubt of what was left out
    assert answer.regions[0]["score"] == 0.97  # the answer read from the reply is not changed


def test_a_stored_cut_applies_only_to_its_version_and_gives_the_predictions_a_version_of_their_own() -> None:
    settings = load_settings({"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": "http://127.0.0.1:9/v1"})
    schema = schema_for(NER_AND_TOPIC)
    zero_shot = model_version(settings, schema.config_hash)
    cuts = {"ner": RegionCut(0.9, 1, 9, zero_shot).to_dict()}
    stored = FewShotEvaluation.loads(FewShotEvaluation(region_cuts=cuts).dumps())
    assert stored is not None and stored.fitted(zero_shot) == ScoreMaps(cuts={"ner": 0.9})
    assert stored.fitted("another model or prompt") is None
    plain = build_predictor(NER_AND_TOPIC, settings)
    cut = build_predictor(NER_AND_TOPIC, settings, evaluation=stored)
    assert plain.model_version == zero_shot and cut.model_version != zero_shot  # other answers: Label Studio asks again
    assert cut.score_maps is not None and cut.score_maps.cuts == {"ner": 0.9}


def test_the_status_page_says_which_controls_regions_are_left_out() -> None:
    from my_ml_backend.server.status import fewshot_text

    text = fewshot_text("0", 0.4, 15, ["ner"], {"ner": RegionCut(0.95, 0, 17, "v").to_dict()})
    assert "regions left out: ner < 0.95" in text and "region scores fitted: ner" in text
