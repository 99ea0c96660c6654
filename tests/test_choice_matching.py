"""Near-miss answers mapped to the closest choice, and only when one choice is close."""

from __future__ import annotations

import logging

import pytest
from label_studio_sdk.label_interface import LabelInterface

from my_ml_backend.labeling.controls import OBJECT_TAGS
from my_ml_backend.labeling.controls.matching import closest_value
from my_ml_backend.labeling.results import build_results
from my_ml_backend.labeling.schema import LabelingSchema, parse_schema

NEWS = ["business", "entertainment", "politics", "sports", "tech"]

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="topic" toName="text" choice="single">
    <Choice value="business"/><Choice value="entertainment" alias="showbiz"/><Choice value="politics"/>
    <Choice value="sports" hint="football, tennis / 体育"/><Choice value="tech"/>
  </Choices>
  <Choices name="sentiment" toName="text" choice="single"><Choice value="正面"/><Choice value="负面"/></Choices>
  <Choices name="tags" toName="text" choice="multiple"><Choice value="Tech"/><Choice value="Sports"/></Choices>
</View>"""


@pytest.mark.parametrize(("answer", "value"), [
    ("Sport", "sports"),  # a stem of the value
    ("Technology", "tech"),  # the value is the answer's stem
    ("The article is about business.", "business"),  # named in a sentence
    ("Politics and business", "politics"),  # the first one named
    ("Entertainmnet", "entertainment"),  # a slip of spelling
    ("showbiz", "entertainment"),  # the config's alias
    ("Tennis", "sports"),  # a part of the config's hint
    ("ＢＵＳＩＮＥＳＳ news", "business"),  # full-width and case
])
def test_near_misses_map_to_the_closest_choice(answer: str, value: str) -> None:
    aliases = {"entertainment": ["showbiz"], "sports": ["football, tennis / 体育"]}
    assert closest_value(answer, NEWS, aliases) == value


@pytest.mark.parametrize("answer", [
    "weather",  # "other"-like spellings below the similarity bar
    "economy",  # a synonym the config does not name: not a string's business to guess
    "a",  # too short to be a stem of "art"
    "",
    "   。",
])
def test_nothing_close_maps_to_nothing(answer: str) -> None:
    assert closest_value(answer, NEWS + ["other", "art"]) is None


def test_two_equally_close_choices_map_to_nothing() -> None:
    assert closest_value("sport", ["sports", "sporty"]) is None  # both have the stem
    assert closest_value("tak", ["tab", "tag"]) is None  # same spelling distance


def test_chinese_near_misses() -> None:
    assert closest_value("这条评论是正面的", ["正面", "负面"]) == "正面"
    assert closest_value("不知道", ["好", "坏"]) is None


def schema() -> LabelingSchema:
    return parse_schema(CONFIG, OBJECT_TAGS)


def test_choices_handler_keeps_exact_answers_and_maps_near_misses_into_valid_results() -> None:
    results, answered = build_results(schema(), {"topic": "Sport", "sentiment": "正面", "tags": ["technology", "x"]},
                                      {"text": "t"})
    assert {r["from_name"]: r["value"]["choices"] for r in results} == {
        "topic": ["sports"], "sentiment": ["正面"], "tags": ["Tech"]}
    assert answered == 3
    assert LabelInterface(CONFIG).validate_prediction({"result": results}, return_errors=True) == []


def test_no_close_choice_gives_no_result_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="my_ml_backend.labeling.controls.choices"):
        results, answered = build_results(schema(), {"topic": "weather report"}, {"text": "t"})
    assert results == [] and answered == 0
    said = [r.getMessage() for r in caplog.records if "no choice close" in r.getMessage()]
    assert said and "weather report" in said[0] and "business" in said[0]
