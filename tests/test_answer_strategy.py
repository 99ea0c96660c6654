"""The answer strategy: JSON or llm_interactive's plain answer, set or chosen per project on its annotations.

The reader is tested as a pure function; the strategy and its choice through the predictor and the project
evaluation against the fake LLM server, scripted so that one way of asking is right and the other wrong.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from my_ml_backend.labeling.free_text import free_text_target, line_probability, matched_choice, read_free_text
from my_ml_backend.labeling.prompts import PromptGuidance
from my_ml_backend.learning.examples import Example
from my_ml_backend.learning.index import ExampleIndex
from my_ml_backend.learning.strategy_choice import decide_strategy
from my_ml_backend.predicting.factory import build_predictor, schema_for
from my_ml_backend.predicting.form_evaluation import evaluate_project
from my_ml_backend.server.status import strategy_text
from my_ml_backend.settings import load_settings
from tests.conftest import TEST_KEY, Backend
from tests.fake_llm import server as fake
from tests.test_status_page import HTML, fetch

NEWS = """<View>
  <Text name="text" value="$text"/>
  <Choices name="topic" toName="text" choice="single">
    <Choice value="business"/><Choice value="sport" hint="football, tennis"/><Choice value="tech"/>
  </Choices>
</View>"""
TWO_CONTROLS = """<View>
  <Text name="text" value="$text"/>
  <Choices name="topic" toName="text"><Choice value="business"/><Choice value="sport"/></Choices>
  <Choices name="tone" toName="text"><Choice value="calm"/><Choice value="angry"/></Choices>
</View>"""
TOPICS = ["business", "sport", "tech"]
ARTICLES = {f"Article {i} about {TOPICS[i % 3]} and other matters": TOPICS[i % 3] for i in range(24)}
PLAIN = re.compile(r"Text: (.*)\Z", re.S)
PROJECT = "1.1700000000"


def target():
    return schema_for(NEWS).targets[0]


@pytest.mark.parametrize(("reply", "value", "literal"), [
    ("sport", "sport", True),
    (" Sport\n", "sport", True),
    ("**Tech**", "tech", True),
    ("The article is about business.", "business", False),
    ("Category: football", "sport", False),  # the choice's hint
    ("\n\n- tech\nbecause it mentions phones", "tech", True),
])
def test_a_plain_answer_is_matched_to_the_choice_it_names(reply: str, value: str, literal: bool) -> None:
    found = matched_choice(reply, target())
    assert found is not None and found[0] == value
    assert (found[1] == 1.0) == literal  # a sentence or an alias is read, but scored below the choice itself


def test_an_answer_close_to_no_choice_takes_the_most_similar_one_scored_low() -> None:
    """llm_interactive's rule: an answer maps to the choice it is most like, so a task is left without a
    pre-label only when its reply shares nothing with any choice; the low similarity puts it first for review."""
    value, similarity = matched_choice("technical stuff", target())
    assert value == "tech" and similarity < 0.75
    assert matched_choice("", target()) is None and matched_choice("  \n*\n", target()) is None
    assert matched_choice("完全无关", target()) is None  # no character in common: picking one would be a guess


def test_the_score_is_the_similarity_times_the_first_lines_probability() -> None:
    schema = schema_for(NEWS)
    texts = {"text": "Shares fell."}
    tokens = [("bus", math.log(0.8)), ("iness", math.log(0.5)), ("\n", 0.0), ("Because", math.log(0.1))]
    assert line_probability(tokens) == pytest.approx(0.4)
    answer = read_free_text(schema, texts, target(), "business\nBecause", tokens)
    assert answer.regions[0]["value"] == {"choices": ["business"]} and answer.score == pytest.approx(0.4)
    assert answer.regions[0]["score"] == pytest.approx(0.4)
    without = read_free_text(schema, texts, target(), "business", None)
    assert without.score == 1.0 and without.coverage == 1.0
    nothing = read_free_text(schema, texts, target(), "", None)
    assert not nothing.answered and nothing.score == 0.0


def test_only_a_single_choice_task_can_be_asked_for_a_plain_answer() -> None:
    assert free_text_target(list(schema_for(NEWS).targets)) is not None
    assert free_text_target(list(schema_for(TWO_CONTROLS).targets)) is None
    multiple = NEWS.replace('choice="single"', 'choice="multiple"')
    assert free_text_target(list(schema_for(multiple).targets)) is None


def test_decide_keeps_json_on_a_tie_and_takes_the_plain_answer_when_it_is_right_more_often() -> None:
    assert decide_strategy({"structured": [True, False], "free-text": [False, True]})[0] == "structured"
    assert decide_strategy({"structured": [True, False, False], "free-text": [True, True, False]})[0] == "free-text"
    assert decide_strategy({"structured": [True, True], "free-text": [True, False]})[0] == "structured"


def env(llm: fake.FakeLLMServer, tmp: Path, **extra: str) -> dict[str, str]:
    return {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CACHE": "off",
            "DATA_DIR": str(tmp), "LLM_MAX_RETRIES": "0", **extra}


def scripted(plain_right: bool) -> Callable[[dict], fake.Reply]:
    """A model right exactly when asked for a plain answer (`plain_right`), or exactly when asked for JSON."""

    def reply(body: dict) -> fake.Reply:
        content = body["messages"][-1]["content"]
        if (plain := PLAIN.search(content)) and "response_format" not in body:
            truth = ARTICLES[plain.group(1)]
            return fake.chat(truth.title() if plain_right else "business" if truth != "business" else "tech")
        text = re.search(r"<<<\n(.*?)\n>>>", content, re.S).group(1)
        truth = ARTICLES[text]
        answer = truth if not plain_right else ("business" if truth != "business" else "tech")
        return fake.chat(json.dumps({"topic": answer, "_confidence": 0.9}))

    return reply


def test_the_free_text_strategy_sends_the_plain_prompt_one_task_per_call(llm: fake.FakeLLMServer,
                                                                          tmp_path: Path) -> None:
    llm.set_responder(scripted(plain_right=True))
    plain = load_settings(env(llm, tmp_path, LLM_ANSWER_STRATEGY="free-text", LLM_TASKS_PER_CALL="5"))
    structured = load_settings(env(llm, tmp_path, LLM_ANSWER_STRATEGY="structured"))
    tasks = [{"id": i, "data": {"text": text}} for i, text in enumerate(list(ARTICLES)[:3])]
    predictor = build_predictor(NEWS, plain)
    items = predictor.predict_batch(tasks)
    assert llm.chat_calls == 3  # not packed: a plain answer names no task
    body = llm.requests[-1]["body"]
    assert "response_format" not in body and len(body["messages"]) == 1
    assert body["messages"][0]["content"].startswith(
        "Classify the text into one of these categories: business, sport, tech.")
    assert [i["result"][0]["value"]["choices"][0] for i in items] == [ARTICLES[t["data"]["text"]] for t in tasks]
    assert predictor.model_version != build_predictor(NEWS, structured).model_version
    assert build_predictor(NEWS, structured).model_version == build_predictor(
        NEWS, load_settings(env(llm, tmp_path))).model_version  # auto before any choice: the JSON version

    llm.reset()
    llm.set_responder(scripted(plain_right=True))
    build_predictor(TWO_CONTROLS, plain).predict_batch([{"id": 1, "data": {"text": list(ARTICLES)[0]}}])
    assert "response_format" in llm.requests[-1]["body"]  # two controls: asked for JSON whatever the setting


def annotated_index() -> ExampleIndex:
    schema = schema_for(NEWS)
    examples = [Example(i, {"text": text}, {"topic": label}) for i, (text, label) in enumerate(ARTICLES.items())]
    return ExampleIndex.from_examples(examples, schema)


@pytest.mark.parametrize("plain_right", [True, False], ids=["plain-wins", "json-wins"])
def test_the_project_evaluation_chooses_the_strategy_its_annotations_favour(
    llm: fake.FakeLLMServer, tmp_path: Path, plain_right: bool
) -> None:
    llm.set_responder(scripted(plain_right))
    settings = load_settings(env(llm, tmp_path, ANSWER_EVAL_CALLS="16", FEWSHOT_EXAMPLES="auto",
                                 FEWSHOT_EVAL_CALLS="0"))
    evaluation = evaluate_project(NEWS, settings, PromptGuidance(), annotated_index())
    assert evaluation.strategy == ("free-text" if plain_right else "structured")
    assert evaluation.strategy_samples == 8 and evaluation.calls == 16 == llm.chat_calls  # within the budget
    assert evaluation.strategy_accuracy == ({"structured": 0.0, "free-text": 1.0} if plain_right
                                            else {"structured": 1.0, "free-text": 0.0})
    assert evaluation.form == "0"
    chosen = build_predictor(NEWS, settings, evaluation=evaluation)
    assert chosen.settings.answers_free_text == plain_right
    assert (chosen.model_version != build_predictor(NEWS, settings).model_version) == plain_right
    fixed = build_predictor(NEWS, settings.with_changes(answer_strategy="structured"), evaluation=evaluation)
    assert not fixed.settings.answers_free_text  # a strategy set by the environment is not overridden
    assert "free-text 100%" in strategy_text(evaluation.strategy, evaluation.strategy_accuracy, 8) or not plain_right


def test_the_score_map_is_fitted_on_the_plain_answers_under_the_version_they_are_served_by(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    """A plain answer written as a sentence is wrong here: its lower similarity score is what the map learns."""

    def reply(body: dict) -> fake.Reply:
        content = body["messages"][-1]["content"]
        if "response_format" in body:
            return fake.chat(json.dumps({"topic": "tech", "_confidence": 0.9}))
        text = PLAIN.search(content).group(1)
        n = list(ARTICLES).index(text)
        truth = ARTICLES[text]
        return fake.chat(truth if n % 3 else f"I would say {'business' if truth != 'business' else 'sport'}")

    llm.set_responder(reply)
    settings = load_settings(env(llm, tmp_path, ANSWER_EVAL_CALLS="48", FEWSHOT_EVAL_CALLS="0"))
    evaluation = evaluate_project(NEWS, settings, PromptGuidance(), annotated_index())
    assert evaluation.strategy == "free-text" and evaluation.score_map is not None
    chosen = build_predictor(NEWS, settings, evaluation=evaluation)
    assert chosen.score_maps is not None and chosen.score_maps.task is not None


def test_without_enough_annotations_or_budget_the_strategy_stays_json(llm: fake.FakeLLMServer,
                                                                       tmp_path: Path) -> None:
    llm.set_responder(scripted(plain_right=True))
    settings = load_settings(env(llm, tmp_path, ANSWER_EVAL_CALLS="6", FEWSHOT_EVAL_CALLS="0"))
    evaluation = evaluate_project(NEWS, settings, PromptGuidance(), annotated_index())
    assert evaluation.strategy == "structured" and "too few" in evaluation.strategy_reason and llm.chat_calls == 0
    off = load_settings(env(llm, tmp_path, ANSWER_EVAL_CALLS="0", FEWSHOT_EVAL_CALLS="0"))
    assert not off.chooses_answer_strategy and not off.evaluates_projects


def test_train_chooses_the_plain_answer_and_the_status_page_and_version_say_so(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    """Through the HTTP API as Label Studio drives it: annotations arrive as webhooks, Train is pressed, and the
    next /setup reports a new model_version; the next prediction is asked the chosen way."""
    llm.set_responder(scripted(plain_right=True))
    backend = Backend({"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CACHE": "off",
                       "ANSWER_EVAL_CALLS": "16", "FEWSHOT_EVAL_CALLS": "0"}, tmp_path / "backend")
    try:
        before = backend.setup(NEWS, PROJECT)
        for n, (text, label) in enumerate(ARTICLES.items(), start=1):
            status, body = backend.post("/webhook", {
                "action": "ANNOTATION_CREATED",
                "annotation": {"id": n, "task": n, "was_cancelled": False, "result": [
                    {"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]},
                "task": {"id": n, "data": {"text": text}}, "project": {"id": 1, "label_config": NEWS}})
            assert status == 201, body
        status, _ = backend.post("/webhook", {"action": "START_TRAINING", "project": {"id": 1, "label_config": NEWS}})
        assert status == 201
        deadline = time.monotonic() + 60
        while (after := backend.setup(NEWS, PROJECT)) == before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert after != before, backend.logs()[-3000:]
        text = list(ARTICLES)[5]
        [item] = backend.predict(NEWS, [{"id": 999, "data": {"text": text}}], PROJECT)
        # the scripted model is right only when asked the plain way; the last request on record may be the next
        # evaluation's (the 24 annotations reach a new bucket), so the answer is what proves how it was asked
        assert item["result"][0]["value"]["choices"] == [ARTICLES[text]] and item["model_version"] == after
        page = fetch(backend.url + "/", HTML)[2].decode()
        assert "free-text" in page and "structured 0%" in page and "free-text 100%" in page
        assert "answer strategy free-text" in backend.logs()
    finally:
        backend.stop()
