"""LLM_RETRY_PLAIN: a JSON answer naming no choice is asked once more the plain way, through the predictor and
the HTTP API, against the fake LLM server answering as a model no grammar holds to the label list."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from my_ml_backend.predicting.factory import build_predictor
from my_ml_backend.settings import load_settings
from tests.conftest import TEST_KEY, Backend
from tests.fake_llm import server as fake
from tests.test_answer_strategy import NEWS, TWO_CONTROLS, env

PLAIN = re.compile(r"\AClassify the text into one of these categories: business, sport, tech\.\n\nText: (.*)\Z", re.S)
OWN_WORD = {"Rangers won the cup final": "cricket", "Shares fell sharply": "stocks", "A new phone chip": "gadgets"}
PLAIN_ANSWER = {"cricket": "Sport", "stocks": "Business", "gadgets": "tech"}


def plain_asks(llm: fake.FakeLLMServer) -> list[dict]:
    return [r["body"] for r in llm.requests if PLAIN.match(r["body"]["messages"][-1]["content"])]


def own_words(plain: Callable[[str], fake.Reply] | None = None) -> Callable[[dict], fake.Reply]:
    """JSON asked: the model's own word for the topic, never a listed choice; plain asked: `plain(word)`, by
    default the listed choice it means."""

    def reply(body: dict) -> fake.Reply:
        content = body["messages"][-1]["content"]
        if (asked := PLAIN.match(content)) and "response_format" not in body:
            word = OWN_WORD[asked.group(1)]
            return plain(word) if plain else fake.chat(PLAIN_ANSWER[word])
        text = re.search(r"<<<\n(.*?)\n>>>", content, re.S).group(1)
        return fake.chat(json.dumps({"topic": OWN_WORD[text], "_confidence": 0.9}))

    return reply


def tasks() -> list[dict]:
    return [{"id": n, "data": {"text": text}} for n, text in enumerate(OWN_WORD, start=1)]


def test_an_answer_naming_no_choice_is_asked_once_more_the_plain_way(
    llm: fake.FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    llm.set_responder(own_words())
    predictor = build_predictor(NEWS, load_settings(env(llm, tmp_path, LLM_TASKS_PER_CALL="1")))
    with caplog.at_level(logging.INFO):
        items = predictor.predict_batch(tasks())
    assert [i["result"][0]["value"]["choices"] for i in items] == [["sport"], ["business"], ["tech"]]
    assert llm.chat_calls == 6  # each task: its JSON call, then its plain call
    asked = plain_asks(llm)
    assert len(asked) == 3 and all("response_format" not in b and len(b["messages"]) == 1 for b in asked)
    assert all(0 < i["score"] <= 1 for i in items)
    assert caplog.text.count("the JSON answer named no choice; asked once more the plain way") == 3


def test_an_answer_that_names_a_choice_costs_no_second_call(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(lambda body: fake.chat(json.dumps({"topic": "sport", "_confidence": 0.8})))
    items = build_predictor(NEWS, load_settings(env(llm, tmp_path))).predict_batch(tasks())
    assert [i["result"][0]["value"]["choices"] for i in items] == [["sport"]] * 3
    assert llm.chat_calls == 3 and not plain_asks(llm)


def test_a_plain_reply_with_no_words_leaves_the_task_empty_and_says_why(
    llm: fake.FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    llm.set_responder(own_words(lambda word: fake.chat("**")))  # markup only: no word to match
    with caplog.at_level(logging.INFO):
        items = build_predictor(NEWS, load_settings(env(llm, tmp_path))).predict_batch(tasks())
    assert [i["result"] for i in items] == [[], [], []] and llm.chat_calls == 6
    assert caplog.text.count("neither answer is close to any choice: left without a pre-label") == 3


def test_a_failing_plain_call_keeps_the_batch(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """The second text's plain call fails (HTTP 500): its task stays empty, the others get their pre-label."""
    answer = own_words()

    def reply(body: dict) -> fake.Reply:
        asked = PLAIN.match(body["messages"][-1]["content"])
        return fake.server_error() if asked and asked.group(1) == "Shares fell sharply" else answer(body)

    llm.set_responder(reply)
    items = build_predictor(NEWS, load_settings(env(llm, tmp_path))).predict_batch(tasks())
    assert [bool(i["result"]) for i in items] == [True, False, True]
    assert "error" not in items[1] or items[1]["result"] == []


def test_off_asks_once_and_the_setting_is_part_of_the_version(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(own_words())
    off = build_predictor(NEWS, load_settings(env(llm, tmp_path, LLM_RETRY_PLAIN="off")))
    items = off.predict_batch(tasks())
    assert [i["result"] for i in items] == [[], [], []] and llm.chat_calls == 3 and not plain_asks(llm)
    on = build_predictor(NEWS, load_settings(env(llm, tmp_path)))
    assert on.model_version != off.model_version  # tasks left empty before get a prediction again
    plain = build_predictor(NEWS, load_settings(env(llm, tmp_path, LLM_ANSWER_STRATEGY="free-text")))
    assert not plain.settings.retries_plain  # a plain answer is matched whatever it says: nothing to retry


def test_a_config_a_plain_answer_cannot_fill_is_not_retried(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(lambda body: fake.chat(json.dumps({"topic": "cricket", "tone": "calm", "_confidence": 0.9})))
    items = build_predictor(TWO_CONTROLS, load_settings(env(llm, tmp_path))).predict_batch(tasks()[:1])
    assert llm.chat_calls == 1 and not plain_asks(llm)
    assert [r["from_name"] for r in items[0]["result"]] == ["tone"]


def test_through_the_http_api_with_the_cache(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """As Label Studio retrieves: the retried answers are stored, and a second retrieve is answered by the cache."""
    llm.set_responder(own_words())
    backend = Backend({"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url,
                       "LLM_TASKS_PER_CALL": "1"}, tmp_path / "backend")
    try:
        first = backend.predict(NEWS, tasks())
        assert [i["result"][0]["value"]["choices"] for i in first] == [["sport"], ["business"], ["tech"]]
        calls = llm.chat_calls
        assert calls == 6
        again = backend.predict(NEWS, tasks())
        assert [i["result"][0]["value"] for i in again] == [i["result"][0]["value"] for i in first]
        assert llm.chat_calls - calls == 3  # the JSON answers naming nothing are not cached; the plain ones are
        assert "asked once more the plain way" in backend.logs()
    finally:
        backend.stop()
