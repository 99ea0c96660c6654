"""The choice distribution read from token alternatives, batch calibration, and the canonical label order."""

from __future__ import annotations

import math

import pytest

from my_ml_backend.labeling.answers import ChoiceDistribution, TaskAnswer, choice_distribution
from my_ml_backend.labeling.calibration import calibrate, calibrate_answer, content_free_prior, content_free_priors
from my_ml_backend.labeling.controls.base import ordered

TOPICS = ["computers", "food", "law", "medicine", "sports"]


def reply(answer: str, alternatives: dict[str, float], before: str = '{"topic": "') -> list[tuple]:
    top = tuple((token, math.log(p)) for token, p in alternatives.items())
    return [(before, -0.01, ()), (answer, math.log(alternatives[answer]), top), ('"}', -0.01, ())]


def test_every_choice_gets_the_probability_of_the_tokens_that_begin_it() -> None:
    # llama.cpp's real shape: "med" and "medicine" both begin medicine; "biology" begins nothing.
    tokens = reply("medicine", {"medicine": 0.3, "med": 0.2, "law": 0.1, "biology": 0.3, "Food": 0.1})
    dist = choice_distribution(tokens, "topic", TOPICS)
    assert dist == pytest.approx([0.0, 1 / 7, 1 / 7, 5 / 7, 0.0])  # renormalised over the choices


def test_the_answer_token_is_found_after_its_own_key_even_with_a_quote_glued_to_it() -> None:
    tokens = [
        ('{"_reason": "a law firm", ', -0.01, ()),
        ('"topic":', -0.01, ()),
        (' "law', math.log(0.6), ((' "law', math.log(0.6)), (' "sports', math.log(0.2)))),
        ('"}', -0.01, ()),
    ]
    assert choice_distribution(tokens, "topic", TOPICS) == pytest.approx([0, 0, 0.75, 0, 0.25])


def test_no_distribution_without_alternatives_or_when_the_first_token_does_not_decide() -> None:
    assert choice_distribution(reply("law", {"law": 0.9})[:1], "topic", TOPICS) is None  # key, no answer
    assert choice_distribution([(t, lp) for t, lp, _ in reply("law", {"law": 0.9})], "topic", TOPICS) is None
    assert choice_distribution(reply("law", {"law": 0.9}), "other", TOPICS) is None
    # "非常" begins two choices and the reply ends without alternatives at the token that would decide.
    assert choice_distribution(reply("非常", {"非常": 0.9, "一般": 0.1}), "topic", ["非常好", "非常差", "一般"]) is None
    # A written first token that begins no choice (the parser matched the answer loosely): its alternatives decide.
    assert choice_distribution(reply("legal", {"legal": 0.5, "law": 0.3, "food": 0.2}), "topic", TOPICS) == (
        pytest.approx([0, 0.4, 0.6, 0, 0]))
    # Shared single-letter alternatives split their share.
    tokens = reply("pos", {"pos": 0.5, "p": 0.2, "neg": 0.3})
    split = choice_distribution(tokens, "topic", ["positive", "politics", "neg"])
    assert split == pytest.approx([0.6, 0.1, 0.3])


def test_the_prior_is_the_content_free_mean_mixed_with_uniform() -> None:
    assert content_free_prior([[1.0, 0.0], [0.5, 0.5]], shrink=0) == [0.75, 0.25]
    assert content_free_prior([[1.0, 0.0]], shrink=0.2) == pytest.approx([0.9, 0.1])
    assert calibrate([0.6, 0.4], [0.8, 0.2], strength=1) == pytest.approx([0.273, 0.727], abs=1e-3)
    assert calibrate([0.6, 0.4], [0.8, 0.2], strength=0) == pytest.approx([0.6, 0.4])


def test_calibrate_answer_leaves_multi_control_scores_and_unscored_items_alone() -> None:
    region = {"from_name": "topic", "value": {"choices": ["food"]}, "score": 0.5}
    other = {"from_name": "ner", "value": {"labels": ["PER"]}, "score": 0.9}
    answer = TaskAnswer([region, other], 0.35, 0.5, "en", {"topic": ChoiceDistribution(("food", "law"), (0.5, 0.5))})
    calibrated = calibrate_answer(answer, {("topic", "zh"): [0.1, 0.9]})  # another language's prior: not used
    assert calibrated.regions[0]["score"] == 0.5 and calibrated.score == pytest.approx((0.5 + 0.9) / 2 * 0.5)
    assert calibrated.regions[1] == other


def test_content_free_priors_ask_each_language_its_own_texts() -> None:
    asked: list[dict] = []

    def answer(task: dict) -> dict | None:
        asked.append(task["data"])
        text = task["data"]["title"]
        if text == "空白":
            return None  # a failed call: the other texts still make the prior
        lang = "zh" if text in ("无", "暂无内容") else "en"
        return TaskAnswer([], 1.0, 1.0, lang, {"topic": ChoiceDistribution(("a", "b"), (0.8, 0.2))})

    priors = content_free_priors({"zh", "en"}, ["title", "body"], answer)
    assert [d["title"] for d in asked] == ["N/A", "[MASK]", "nothing", "无", "空白", "暂无内容"]
    assert asked[0] == {"title": "N/A", "body": "N/A"}  # every text field of the config
    assert priors == {("topic", "en"): pytest.approx([0.74, 0.26]), ("topic", "zh"): pytest.approx([0.74, 0.26])}


def test_label_sets_have_one_order_whatever_the_config_says() -> None:
    assert ordered(["sports", "Food", "law"]) == ordered(["law", "sports", "Food"]) == ["Food", "law", "sports"]
    assert ordered(["10 stars", "2 stars", "1 star"]) == ["1 star", "2 stars", "10 stars"]
    assert ordered(["负面", "正面"]) == ordered(["正面", "负面"])


def test_choices_that_share_their_first_tokens_are_read_on_to_the_token_that_tells_them_apart() -> None:
    # P(非常) x P(好 | 非常): "一般" is decided at the first token, the two "非常" choices at the second.
    tokens = [('{"topic": "', -0.01, ()),
              ("非常", math.log(0.9), (("非常", math.log(0.9)), ("一般", math.log(0.1)))),
              ("好", math.log(0.7), (("好", math.log(0.7)), ("差", math.log(0.3)))),
              ('"}', -0.01, ())]
    assert choice_distribution(tokens, "topic", ["非常好", "非常差", "一般"]) == pytest.approx([0.63, 0.27, 0.1])
    # Words after the shared one keep their space; the case of the config's names does not matter.
    tokens = [('{"sentiment": "', -0.01, ()), ("Very", -0.01, (("Very", -0.01),)),
              (" negative", math.log(0.6), ((" negative", math.log(0.6)), (" positive", math.log(0.4)))),
              ('"}', -0.01, ())]
    assert choice_distribution(tokens, "sentiment", ["Very positive", "very negative"]) == pytest.approx([0.4, 0.6])
    # One name is the start of another: the closing quote is "满意" itself, "度" goes on to "满意度高".
    tokens = [('{"topic": "', -0.01, ()), ("满意", -0.01, (("满意", -0.01),)),
              ('"}', math.log(0.8), (('"}', math.log(0.8)), ("度", math.log(0.2))))]
    assert choice_distribution(tokens, "topic", ["满意", "满意度高"]) == pytest.approx([0.8, 0.2])


def test_shared_first_tokens_no_longer_leave_the_answer_to_the_listed_position() -> None:
    # The written answer took the first listed choice; the distribution at the deciding token says the other.
    tokens = [('{"topic": "', -0.01, ()), ("评价", -0.01, (("评价", -0.01),)),
              ("正面", math.log(0.45), (("正面", math.log(0.45)), ("负面", math.log(0.55)))), ('"}', -0.01, ())]
    dist = choice_distribution(tokens, "topic", ["评价正面", "评价负面"])
    answer = TaskAnswer([{"from_name": "topic", "to_name": "text", "type": "choices",
                          "value": {"choices": ["评价正面"]}, "score": 0.45}], 0.45, 1.0, "zh",
                        {"topic": ChoiceDistribution(("评价正面", "评价负面"), tuple(dist))})
    prediction = calibrate_answer(answer, {("topic", "zh"): [0.5, 0.5]})
    assert prediction.regions[0]["value"]["choices"] == ["评价负面"]
    assert prediction.regions[0]["score"] == pytest.approx(0.55)
