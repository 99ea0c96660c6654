"""A list answer closed in doubt is asked once more with `minItems`, and the new mention it finds is kept.

The unit part checks the rules (`labeling.extension`); the backend part drives a real backend
process against the local fake LLM, which answers a request by its schema: what the second
request carries, how many calls a task costs and what the prediction holds are read off the wire.
Whether the forced item is right on a real model is measured by `bench/quality.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from my_ml_backend.labeling.answers import TaskAnswer, read_answer
from my_ml_backend.labeling.extension import doubtful, enforced, extended, forced_schema, new_regions
from my_ml_backend.labeling.schema import LabelingSchema
from my_ml_backend.learning.autotune import FewShotEvaluation, Judged, extension_verdict
from my_ml_backend.predicting.factory import schema_for
from my_ml_backend.settings import load_settings
from tests.conftest import TEST_KEY, Backend
from tests.fake_llm import server as fake

NER_CONFIG = """<View>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
  <Text name="text" value="$text"/>
</View>"""
TEXT = "Ann Lee works at Acme."


def tokens(*pieces: tuple) -> list[tuple]:
    """(text, probability[, {alternative: probability}]) to the client's (token, logprob, alternatives)."""
    out = []
    for text, p, *alts in pieces:
        out.append((text, math.log(p), tuple((a, math.log(q)) for a, q in (alts[0] if alts else {}).items())))
    return out


ANN = (('{"ner": [{"label": "', 0.99), ("PER", 0.9), ('", "text": "', 0.99), ("Ann Lee", 0.95))
# The model closes the list after Ann Lee, though it gave one more item 0.4.
SHORT = tokens(*ANN, ('"}', 0.6, {'"}': 0.6, '"},': 0.4}), ("]}", 0.99, {"]}": 0.99}))
SURE = tokens(*ANN, ('"}', 0.97, {'"}': 0.97, '"},': 0.03}), ("]}", 0.99, {"]}": 0.99}))


def longer(name: str, label: str, p_text: float) -> list[tuple]:
    """The same list made to go on: one more item, then closed surely."""
    return tokens(*ANN, ('"}', 0.6, {'"}': 0.6, '"},': 0.4}), (', {"label": "', 0.99), (label, 0.9),
                  ('", "text": "', 0.99), (name, p_text), ('"}', 0.9, {'"}': 0.9, '"},': 0.1}), ("]}", 0.99))


def text_of(reply: list[tuple]) -> str:
    return "".join(t[0] for t in reply)


TEXT_SCHEMA = schema_for(NER_CONFIG)


def read(schema: LabelingSchema, text: str, reply_tokens: list[tuple]) -> TaskAnswer:
    """A reply read as the backend reads it, for the task TEXT."""
    return read_answer(schema, {"text": TEXT}, schema.targets, text, reply_tokens)


def region(name: str, start: int, end: int, label: str, score: float) -> dict:
    value = {"start": start, "end": end, "text": TEXT[start:end], "labels": [label]}
    return {"from_name": name, "to_name": "text", "type": "labels", "value": value, "score": score}


def test_only_lists_closed_in_doubt_are_asked_again_and_made_one_item_longer() -> None:
    lists = read(TEXT_SCHEMA, text_of(SHORT), SHORT).list_lengths  # one list answer of one item, as parsed
    assert lists == {"ner": 1}
    assert doubtful(SHORT, lists, below=0.9) == {"ner": 1}
    assert doubtful(SHORT, lists, below=0.5) == {}  # 0.6 complete is not under 0.5
    assert doubtful(SURE, lists, below=0.9) == {}
    assert doubtful([], lists, below=0.9) == {}  # no logprobs, no reading, no call
    assert read(TEXT_SCHEMA, '{"ner": "Ann Lee"}', SHORT).list_lengths == {}  # not a list: never doubtful
    schema = {"type": "object", "properties": {"ner": {"type": "array", "items": {}}}, "required": ["ner"]}
    forced = forced_schema(schema, {"ner": 1})
    assert forced["properties"]["ner"]["minItems"] == 2
    assert "minItems" not in schema["properties"]["ner"]  # the task's own schema is not touched


def test_a_forced_item_counts_only_when_it_names_a_mention_not_listed_yet() -> None:
    first = [region("ner", 0, 7, "PER", 0.95)]
    again_same = [region("ner", 0, 7, "PER", 0.95), region("ner", 0, 3, "ORG", 0.9)]  # Ann, inside Ann Lee
    assert new_regions(first, again_same, ["ner"]) == []
    found = region("ner", 17, 21, "ORG", 0.8)
    assert new_regions(first, [*first, found], ["ner"]) == [found]
    assert new_regions(first, [*first, found], ["other"]) == []  # only the lists that were forced


def test_the_grown_list_is_scored_at_its_new_end_and_a_doubted_forced_item_is_left_out() -> None:
    first = TaskAnswer([region("ner", 0, 7, "PER", 0.95)], 0.57, 0.6, "en")
    second = TaskAnswer([region("ner", 0, 7, "PER", 0.95), region("ner", 17, 21, "ORG", 0.8)], 0.1, 1.0, "en")
    grown = extended(first, second, ({"ner": 0.6}, {"ner": 0.9}), wanted=1, keep_from=0.5)
    assert [r["value"]["text"] for r in grown.regions] == ["Ann Lee", "Acme"]
    assert grown.score == pytest.approx((0.95 + 0.8) / 2 * 0.9)  # regions' mean x P(complete) at the new end
    assert grown.coverage == pytest.approx(0.9)  # what a choice re-score multiplies by
    assert first.regions == [region("ner", 0, 7, "PER", 0.95)]  # the first prediction is not changed
    doubted = TaskAnswer([region("ner", 0, 7, "PER", 0.95), region("ner", 17, 21, "ORG", 0.3)], 0.1, 1.0, "en")
    assert extended(first, doubted, ({"ner": 0.6}, {"ner": 0.9}), wanted=1, keep_from=0.5) is first


def test_an_endpoint_that_ignores_min_items_is_seen_in_its_reply() -> None:
    schema = forced_schema({"properties": {"ner": {"type": "array"}, "topic": {"type": "string"}}}, {"ner": 1})
    longer_reply = longer("Acme", "ORG", 0.8)
    assert enforced(schema, read(TEXT_SCHEMA, text_of(longer_reply), longer_reply).list_lengths)
    assert not enforced(schema, read(TEXT_SCHEMA, text_of(SHORT), SHORT).list_lengths)  # minItems was not applied
    assert not enforced(schema, read(TEXT_SCHEMA, '{"topic": "law"}', []).list_lengths)


def test_the_projects_annotations_keep_or_drop_list_extension_by_the_regions_it_added() -> None:
    person = ("ner", 0.95, True)
    first = Judged(False, 0.5, [person])
    found, invented = ("ner", 0.9, True), ("ner", 0.9, False)
    assert extension_verdict([first, Judged(True)]) == (None, "list extension added no judged region")
    assert extension_verdict([Judged(True, 0.8, [person, found], first)] * 2 + [
        Judged(False, 0.8, [person, invented], first)])[0] is True
    assert extension_verdict([Judged(True, 0.8, [person, found], first),
                              Judged(False, 0.8, [person, invented], first)])[0] is True  # a tie: the default (on)
    # A task already wrong (an invented span) stays wrong: only its regions show the second invention.
    wrong_first = Judged(False, 0.5, [person, invented])
    verdict, why = extension_verdict([Judged(False, 0.4, [person, invented, invented], wrong_first)] * 2 + [
        Judged(True, 0.8, [person, found], first)])
    assert verdict is False and why == "list extension added 1 regions the annotators have and 2 they do not"
    # an evaluation stored before this field: the setting stands
    assert FewShotEvaluation.loads('{"form": "0"}').extend is None
    assert FewShotEvaluation.loads(FewShotEvaluation(extend=False).dumps()).extend is False


def test_the_setting_is_auto_off_or_a_threshold() -> None:
    assert load_settings({}).extend_below == 0.9
    assert load_settings({"LLM_EXTEND_LISTS": "off"}).extend_below == 0
    assert load_settings({"LLM_EXTEND_LISTS": "0"}).extend_below == 0
    assert load_settings({"LLM_EXTEND_LISTS": "on"}).extend_below == 0.9
    assert load_settings({"LLM_EXTEND_LISTS": "1"}).extend_below == 0.9  # on, not "a list at P(complete) 1"
    assert load_settings({"LLM_EXTEND_LISTS": "0.75"}).extend_below == 0.75
    for wrong in ("2", "0.0", "-0.5", "sometimes"):
        with pytest.raises(ValueError, match="LLM_EXTEND_LISTS"):
            load_settings({"LLM_EXTEND_LISTS": wrong})
    # Where it cannot work it is not part of model_version (ModelScope projects keep theirs).
    modelscope = load_settings({"MODELSCOPE_API_URL": "https://api-inference.modelscope.cn/v1"})
    assert not modelscope.extends_lists and "extend_lists" not in modelscope.generation_fingerprint()
    local = load_settings({"MODELSCOPE_API_URL": "http://127.0.0.1:8765/v1"})
    assert local.extends_lists and local.generation_fingerprint()["extend_lists"] == 0.9
    assert not load_settings({"MODELSCOPE_API_URL": "http://127.0.0.1:8765/v1", "LLM_LOGPROBS": "off"}).extends_lists


def ner_server(llm: fake.FakeLLMServer, first: list[tuple], second: list[tuple] | None = None) -> list[int | None]:
    """Answer each request by its schema: `second` when the list is made to go on. Returns the minItems seen."""
    seen: list[int | None] = []

    def respond(body: dict) -> fake.Reply:
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
        seen.append(schema.get("properties", {}).get("ner", {}).get("minItems"))
        reply = second if seen[-1] and second is not None else first
        return fake.chat(text_of(reply), logprobs=reply)

    llm.set_responder(respond)
    return seen


def env_for(llm: fake.FakeLLMServer, **extra: str) -> dict[str, str]:
    return {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CACHE": "off",
            "FEWSHOT_EXAMPLES": "0", **extra}


@pytest.fixture()
def backend(llm: fake.FakeLLMServer, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(env_for(llm), tmp_path / "backend")
    yield b
    b.stop()


def test_a_doubtful_entity_list_costs_one_more_call_that_finds_the_missing_entity(
    backend: Backend, llm: fake.FakeLLMServer
) -> None:
    seen = ner_server(llm, SHORT, longer("Acme", "ORG", 0.8))
    [prediction] = backend.predict(NER_CONFIG, [{"id": 1, "data": {"text": TEXT}}])
    assert seen == [None, 2]  # the second request forbids closing the list before a second item
    assert [(r["value"]["text"], r["value"]["labels"]) for r in prediction["result"]] == [
        ("Ann Lee", ["PER"]), ("Acme", ["ORG"])]
    assert prediction["result"][1]["value"]["start"] == 17
    assert prediction["score"] == pytest.approx((0.95 + 0.8) / 2 * 0.9, abs=1e-3)


def test_a_sure_list_costs_one_call(backend: Backend, llm: fake.FakeLLMServer) -> None:
    seen = ner_server(llm, SURE, longer("Acme", "ORG", 0.8))
    [prediction] = backend.predict(NER_CONFIG, [{"id": 1, "data": {"text": TEXT}}])
    assert seen == [None]
    assert [r["value"]["text"] for r in prediction["result"]] == ["Ann Lee"]


def test_a_forced_item_that_repeats_a_listed_name_or_a_failed_second_call_keeps_the_first_answer(
    backend: Backend, llm: fake.FakeLLMServer
) -> None:
    seen = ner_server(llm, SHORT, longer("Ann", "ORG", 0.9))  # "Ann" again, under another type
    [prediction] = backend.predict(NER_CONFIG, [{"id": 1, "data": {"text": TEXT}}])
    assert seen == [None, 2]
    assert [r["value"]["text"] for r in prediction["result"]] == ["Ann Lee"]
    assert prediction["score"] == pytest.approx(0.95 * 0.6, abs=1e-3)

    def respond(body: dict) -> fake.Reply:
        schema = body["response_format"]["json_schema"]["schema"]
        if schema["properties"]["ner"].get("minItems"):
            return fake.server_error(500)
        return fake.chat(text_of(SHORT), logprobs=SHORT)

    llm.set_responder(respond)
    [prediction] = backend.predict(NER_CONFIG, [{"id": 2, "data": {"text": TEXT}}])
    assert [r["value"]["text"] for r in prediction["result"]] == ["Ann Lee"]  # the task is not lost
    assert prediction["score"] == pytest.approx(0.95 * 0.6, abs=1e-3)


@pytest.mark.parametrize("extra", [{"LLM_EXTEND_LISTS": "off"}, {"LLM_OUTPUT_MODE": "json_object"}])
def test_no_second_call_when_switched_off_or_when_the_endpoint_is_not_sent_the_schema(
    llm: fake.FakeLLMServer, tmp_path: Path, extra: dict[str, str]
) -> None:
    seen = ner_server(llm, SHORT, longer("Acme", "ORG", 0.8))
    b = Backend(env_for(llm, **extra), tmp_path / "b")
    try:
        [prediction] = b.predict(NER_CONFIG, [{"id": 1, "data": {"text": TEXT}}])
    finally:
        b.stop()
    assert seen == [None]  # json_object without a schema: minItems would not reach the decoder
    assert [r["value"]["text"] for r in prediction["result"]] == ["Ann Lee"]


def test_an_endpoint_that_ignores_min_items_is_asked_again_once_per_predictor(
    backend: Backend, llm: fake.FakeLLMServer
) -> None:
    seen = ner_server(llm, SHORT)  # the same one-item list whatever the schema says
    [first] = backend.predict(NER_CONFIG, [{"id": 1, "data": {"text": TEXT}}])
    [second] = backend.predict(NER_CONFIG, [{"id": 2, "data": {"text": TEXT}}])
    assert seen == [None, 2, None]  # the second task is not asked again
    assert [r["value"]["text"] for r in first["result"] + second["result"]] == ["Ann Lee", "Ann Lee"]
    assert "endpoint ignored minItems" in backend.logs()


MIXED_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="topic" toName="text" choice="single"><Choice value="business"/><Choice value="sports"/></Choices>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
</View>"""


def test_the_content_free_calibration_calls_never_extend_a_list(backend: Backend, llm: fake.FakeLLMServer) -> None:
    """A single choice beside an entity list: the task (and its doubtful list) costs two calls, the three
    content-free calls that calibrate the choice one each, though their lists end in doubt too."""
    choice = ("business", 0.7, {"business": 0.7, "sports": 0.3})
    topic = (('{"topic": "', 0.99), choice, ('", "ner": [{"label": "', 0.99))
    head = (*topic, ("PER", 0.9), ('", "text": "', 0.99), ("Ann Lee", 0.95), ('"}', 0.6, {'"}': 0.6, '"},': 0.4}))
    short = tokens(*head, ("]}", 0.99, {"]}": 0.99}))
    more = tokens(*head, (', {"label": "', 0.99), ("ORG", 0.9), ('", "text": "', 0.99), ("Acme", 0.8),
                  ('"}', 0.9, {'"}': 0.9, '"},': 0.1}), ("]}", 0.99))
    seen = ner_server(llm, short, more)
    [prediction] = backend.predict(MIXED_CONFIG, [{"id": 1, "data": {"text": TEXT}}])
    assert sorted(seen, key=str) == [2, None, None, None, None]  # the task twice, then three content-free texts once
    assert [r["value"].get("text") for r in prediction["result"] if r["from_name"] == "ner"] == ["Ann Lee", "Acme"]
