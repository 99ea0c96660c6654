"""What an endpoint, a model or a client may send that no well-behaved one does, against the real server.

Found by a review of the prediction path (2026-12-02): Python's json reads NaN, Infinity and
1e999, and int() of one raised and lost the whole task (its pack too), and, inside the cache's
"worth keeping" check, read as the endpoint refusing the output mode; a logprob of 1.0 (a
"missing" marker on some servers) or NaN gave scores Label Studio refuses; a task whose data
is not an object failed a packed batch with a 500; a malformed interactive context gave a 500;
non-finite or negative settings crashed at start with a traceback or were silently used.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator

import pytest
from label_studio_sdk.label_interface import LabelInterface

import tests.fake_llm.server as fake
from my_ml_backend.labeling.parsing import parse_reply
from my_ml_backend.labeling.prompts import context_instruction
from my_ml_backend.labeling.results import build_results
from my_ml_backend.predicting.factory import schema_for
from my_ml_backend.settings import load_settings
from tests.conftest import ROOT, TEST_KEY, Backend

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="sentiment" toName="text" choice="single"><Choice value="pos"/><Choice value="neg"/></Choices>
<Number name="n" toName="text"/>
<Rating name="r" toName="text"/>
<Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
</View>"""
SCHEMA = schema_for(CONFIG)
LI = LabelInterface(CONFIG)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_number_that_is_not_finite_loses_only_its_own_answer(bad: str) -> None:
    text = "Alice works at Acme."
    reply = (f'{{"sentiment": "pos", "n": {bad}, "r": {bad}, '
             f'"ner": [{{"label": "PER", "text": "Alice", "start": {bad}}}]}}')
    results, _ = build_results(SCHEMA, parse_reply(reply, ["sentiment", "n", "r", "ner"]), {"text": text})
    assert {r["from_name"] for r in results} == {"sentiment", "ner"}  # the number and the rating are lost
    assert LI.validate_prediction({"result": results}, return_errors=True) == []
    person = next(r for r in results if r["from_name"] == "ner")
    assert (person["value"]["start"], person["value"]["end"]) == (0, 5)  # found by its text, the hint ignored


@pytest.fixture(scope="module")
def cached_packing_backend(llm_server: fake.FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
                           ) -> Iterator[Backend]:
    """The response cache on (its check ran inside the call) and 3 tasks a call."""
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm_server.base_url, "LLM_TASKS_PER_CALL": "3",
           "LLM_TIMEOUT": "2", "LLM_MAX_RETRIES": "1", "LLM_EXTEND_LISTS": "off"}
    backend = Backend(env, tmp_path_factory.mktemp("untrusted"))
    yield backend
    backend.stop()


def formats(llm: fake.FakeLLMServer) -> list[str]:
    return [(r["body"].get("response_format") or {}).get("type", "none") for r in llm.requests
            if r["path"].endswith("/chat/completions")]


def test_a_nan_answer_costs_one_call_and_leaves_the_output_mode_alone(
    cached_packing_backend: Backend, llm: fake.FakeLLMServer
) -> None:
    llm.set_default(fake.chat('{"sentiment": "neg", "n": NaN, "r": 4}'))
    [item] = cached_packing_backend.predict(CONFIG, [{"id": 1, "data": {"text": "nan answer, first task"}}])
    assert {r["from_name"]: r["value"] for r in item["result"]}.keys() == {"sentiment", "r"}
    llm.set_default(fake.chat('{"sentiment": "pos", "n": 2, "r": 5}'))
    [item] = cached_packing_backend.predict(CONFIG, [{"id": 2, "data": {"text": "a task of another project"}}],
                                            project="2.1700000000")
    assert {r["from_name"] for r in item["result"]} == {"sentiment", "n", "r"}
    modes = formats(llm)
    assert len(set(modes[-2:])) == 1, modes  # the first output mode kept: no step down for our own check
    assert len(modes) <= 3, modes  # at most the first mode's one refusal by this test server, never 4 calls


def test_one_tasks_nan_in_a_pack_costs_that_answer_only(
    cached_packing_backend: Backend, llm: fake.FakeLLMServer
) -> None:
    llm.set_default(fake.chat('{"T1": {"sentiment": "pos", "r": 4}, "T2": {"sentiment": "neg", "r": NaN}, '
                              '"T3": {"sentiment": "pos", "r": 5}}'))
    items = cached_packing_backend.predict(CONFIG, [{"id": i, "data": {"text": f"packed text {i}"}} for i in (1, 2, 3)])
    answers = [{r["from_name"]: r["value"] for r in item["result"]} for item in items]
    assert [a.get("r") for a in answers] == [{"rating": 4}, None, {"rating": 5}]
    assert [a["sentiment"]["choices"] for a in answers] == [["pos"], ["neg"], ["pos"]]


def test_a_task_whose_data_is_not_an_object_fails_alone_in_a_packed_batch(
    cached_packing_backend: Backend, llm: fake.FakeLLMServer
) -> None:
    llm.set_default(fake.chat('{"sentiment": "pos"}'))
    for bad in ("oops", ["oops"], 5):
        good = {"id": 1, "data": {"text": f"a good task next to {bad!r}"}}
        items = cached_packing_backend.predict(CONFIG, [good, {"id": 2, "data": bad}])
        assert items[0]["result"] and "result" not in items[1]  # not stored: retried on the next retrieve
        assert "no text found" in items[1].get("error", ""), items[1]


def logprob_reply(content: str, value: float) -> fake.Reply:
    """Every token and alternative of `content` carries `value` as its logprob."""
    pieces = [content[i:i + 3] for i in range(0, len(content), 3)]
    return fake.chat(content, logprobs=[(p, value, [(p, value)]) for p in pieces])


@pytest.mark.parametrize("value", [1.0, 0.05, float("nan"), float("-inf")])
def test_scores_stay_numbers_in_0_1_whatever_logprobs_the_endpoint_sends(
    cached_packing_backend: Backend, llm: fake.FakeLLMServer, value: float
) -> None:
    llm.set_default(logprob_reply('{"sentiment": "pos", "ner": [{"label": "PER", "text": "Alice"}]}', value))
    payload = {"tasks": [{"id": 1, "data": {"text": f"Alice works at Acme ({value})"}}], "project": "1.1",
               "label_config": CONFIG, "params": {"context": None}}
    status, raw = cached_packing_backend.request("POST", "/predict", payload)
    assert status == 200
    [item] = raw["results"]
    scores = [item["score"], *(r["score"] for r in item["result"] if "score" in r)]
    assert item["result"] and all(isinstance(s, float) and math.isfinite(s) and 0 <= s <= 1 for s in scores), scores
    assert LI.validate_prediction(item, return_errors=True) == []
    json.dumps(raw, allow_nan=False)  # a NaN anywhere would be invalid JSON for Label Studio


INTERACTIVE = """<View><Text name="text" value="$text"/><TextArea name="prompt" toName="text"/>
<Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices></View>"""


@pytest.mark.parametrize("context", [
    {"result": 5}, {"result": [{"from_name": "prompt", "value": "x"}]},
    {"result": [{"from_name": "prompt", "value": {"text": 3}}]}, {"result": [{"from_name": ["prompt"]}]},
    {"result": [5, None, "x"]},
])
def test_a_malformed_interactive_context_is_skipped_not_a_500(context: dict) -> None:
    assert context_instruction(schema_for(INTERACTIVE), context) == ""


def test_the_interactive_instruction_is_still_read() -> None:
    schema = schema_for(INTERACTIVE)
    assert context_instruction(schema, {"result": [{"from_name": "prompt", "value": {"text": ["Be strict"]}}]}) == (
        "Be strict")
    assert context_instruction(schema, {"result": [{"from_name": "prompt", "value": {"text": "Be kind"}}]}) == (
        "Be kind")


@pytest.mark.parametrize("name, value", [
    ("LLM_MAX_TOKENS", "inf"), ("LLM_MAX_TOKENS", "nan"), ("LLM_CONCURRENCY", "1e400"), ("MAX_REQUEST_MB", "inf"),
    ("PREDICT_SLOTS", "-1"), ("MAX_INPUT_CHARS", "-5"), ("LLM_TIMEOUT", "-1"), ("LLM_MAX_TOKENS", "-1"),
    ("LLM_MAX_RETRIES", "-2"),
])
def test_a_setting_out_of_range_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize("value", ["9am", "00:00 Europe/Pekin"])
def test_a_wrong_quota_reset_stops_the_start_with_one_line(value: str, tmp_path: object) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LOG_DIR": str(tmp_path), "DATA_DIR": str(tmp_path),
           "LLM_QUOTA_RESET": value}
    done = subprocess.run([sys.executable, "-c", "import my_ml_backend._wsgi"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "配置错误" in done.stderr and "LLM_QUOTA_RESET" in done.stderr and "Traceback" not in done.stderr
