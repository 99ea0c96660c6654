"""P(a list answer is complete), read at the token where the model closed the list, and the task score it lowers."""

from __future__ import annotations

import math

import pytest

from my_ml_backend.labeling.scoring import completeness, list_complete, prediction_score


def tokens(*pieces: tuple) -> list[tuple]:
    """(text, probability[, {alternative: probability}]) to the client's (token, logprob, alternatives)."""
    out = []
    for text, p, *alts in pieces:
        top = tuple((a, math.log(q)) for a, q in alts[0].items()) if alts else ()
        out.append((text, math.log(p), top))
    return out


ITEM = (('{"ner": [{"label": "', 0.99), ("PER", 0.6), ('", "text": "', 0.99), ("Ann", 0.9), (" Lee", 0.9))


def test_the_chance_of_one_more_item_is_summed_along_the_tokens_that_close_the_list() -> None:
    # llama.cpp's shape: '"}' leaves the decision to the next token, '"},' and '"}]' take it at once.
    reply = tokens(
        *ITEM,
        ('"}', 0.7, {'"}': 0.7, '"},': 0.25, '"}]': 0.05}),
        ("]", 0.9, {"]": 0.9, ",": 0.08, " ]": 0.02}),
        ("}", 0.99),
    )
    assert list_complete(reply, "ner") == pytest.approx(1 - (0.25 + 0.7 * 0.08))


def test_spaces_and_newlines_between_the_item_and_the_bracket_do_not_matter() -> None:
    reply = tokens(*ITEM, ('"}\n', 0.8, {'"}\n': 0.8, '"},\n': 0.2}), ("  ],", 0.6, {"  ],": 0.6, "  {": 0.4}),
                   ('"_confidence": 0.9}', 0.9))
    # "  {" after '"}\n' would be a second item without its comma: not a continuation of this list.
    assert list_complete(reply, "ner") == pytest.approx(0.8)


def test_an_empty_list_is_complete_as_likely_as_its_bracket_closes_at_once() -> None:
    reply = tokens(('{"ner": ', 0.99), ("[]", 0.55, {"[]": 0.55, '[{"': 0.4, "[\n": 0.05}), ("}", 0.99))
    assert list_complete(reply, "ner") == pytest.approx(0.6)


def test_without_alternatives_the_tokens_written_are_a_lower_bound() -> None:
    reply = [(t, lp) for t, lp, _ in tokens(*ITEM, ('"}', 0.7), ("]}", 0.9))]
    assert list_complete(reply, "ner") == pytest.approx(0.7 * 0.9)


def test_a_list_cut_at_max_tokens_is_as_complete_as_the_model_would_have_stopped_after_its_last_whole_item() -> None:
    # A looping model: it wrote "," after every item; the answer keeps the complete ones.
    looping = tokens(*ITEM, ('"},', 0.9, {'"},': 0.9, '"}]': 0.08}), (' {"label": "PER", "text": "Ann Lee', 0.99),
                     ('"}', 0.95, {'"}': 0.95}), (",", 0.97, {",": 0.97, "]": 0.03}), (' {"label": "PER", "te', 0.99))
    assert list_complete(looping, "ner") == pytest.approx(0.95 * 0.03)
    assert list_complete(tokens(*ITEM, ('"},', 0.6)), "ner") is None  # no alternatives: no reading
    assert list_complete(tokens(*ITEM), "ner") is None  # not one complete item


def test_no_reading_of_a_plain_value_a_missing_key_or_no_tokens() -> None:
    assert list_complete(tokens(('{"topic": "', 0.99), ("law", 0.6), ('"}', 0.99)), "topic") is None
    assert list_complete(tokens(*ITEM, ('"}]}', 0.99)), "other") is None
    assert list_complete([], "ner") is None


def test_brackets_inside_an_entity_name_do_not_end_the_list() -> None:
    reply = tokens(('{"ner": [{"label": "ORG", "text": "', 0.99), ('A]B \\"x\\" [C', 0.9),
                   ('"}', 0.5, {'"}': 0.5, '"},': 0.5}), ("]}", 0.99, {"]}": 0.99}))
    assert list_complete(reply, "ner") == pytest.approx(0.5)


def test_a_doubtful_end_lowers_the_task_score_and_a_sure_one_leaves_it() -> None:
    doubtful = tokens(*ITEM, ('"}', 0.9, {'"}': 0.6, '"},': 0.4}), ("]}", 0.99))
    sure = [(t, lp) for t, lp, _ in tokens(*ITEM, ('"}]}', 1.0))]
    answers = {"ner": [{"label": "PER", "text": "Ann Lee"}], "topic": "law"}
    def score(reply: list[tuple], regions: list[float], coverage: float, given: dict, names: list[str]) -> float:
        """As the predictor scores a task: the regions' mean x coverage x P(the lists are complete)."""
        return prediction_score(reply, regions, coverage * completeness(reply, given, names), given)

    assert score(doubtful, [0.9], 1.0, answers, ["ner", "topic"]) == pytest.approx(0.9 * 0.6)
    assert score(sure, [0.9], 1.0, answers, ["ner", "topic"]) == pytest.approx(0.9)
    assert score(doubtful, [0.9], 0.5, answers, ["topic"]) == pytest.approx(0.45)  # only lists count
    assert score([], [], 1.0, {"_confidence": 0.8, **answers}, ["ner"]) == pytest.approx(0.8)
