"""Output modes (json_schema -> json_object -> text), learned per endpoint, and scores."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
from label_studio_sdk.label_interface import LabelInterface

from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.errors import ErrorKind, PredictionError
from my_ml_backend.llm.output_modes import OutputMode, initial_mode, response_format, step_down
from my_ml_backend.settings import Settings, load_settings
from tests.conftest import TEST_KEY, Backend, config
from tests.fake_llm import server as fake

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
MESSAGES = [{"role": "user", "content": "hi"}]


def client(llm: fake.FakeLLMServer, **kw: object) -> LLMClient:
    return LLMClient(Settings(api_key=TEST_KEY, base_url=llm.base_url, max_retries=0, **kw))  # type: ignore[arg-type]


def fmt(request: dict) -> str:
    return ((request["body"] or {}).get("response_format") or {}).get("type", "text")


def modelscope_like(body: dict) -> fake.Reply:
    """ModelScope: json_schema gives a 200 with choices null; json_object works."""
    kind = (body.get("response_format") or {}).get("type")
    return fake.null_choices() if kind == "json_schema" else fake.chat('{"a": "ok"}')


def strict_text_only(body: dict) -> fake.Reply:
    """An endpoint that rejects every response_format (400) and logprobs."""
    if body.get("response_format"):
        return fake.error(400, "response_format is not supported")
    if body.get("logprobs"):
        return fake.error(400, "logprobs is not supported by this model")
    return fake.chat('Sure! ```json\n{"a": "ok"}\n```')


def test_initial_mode_per_host() -> None:
    assert initial_mode("https://api-inference.modelscope.cn/v1") == OutputMode.JSON_OBJECT
    assert initial_mode("https://dashscope.aliyuncs.com/compatible-mode/v1") == OutputMode.JSON_OBJECT
    assert initial_mode("http://localhost:8000/v1") == OutputMode.JSON_SCHEMA
    assert initial_mode("http://localhost:8000/v1", "text") == OutputMode.TEXT
    s = load_settings({"MODELSCOPE_API_KEY": "k"})
    assert LLMClient(s).logprobs is False  # no paid refusal on ModelScope
    assert load_settings({"LLM_LOGPROBS": "true"}).logprobs is True


def test_schema_mode_sends_the_schema(llm: fake.FakeLLMServer) -> None:
    llm.enqueue(fake.chat('{"a": "x"}'))
    reply = client(llm).chat(MESSAGES, SCHEMA)
    sent = llm.requests[0]["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == SCHEMA
    assert reply.mode == "json_schema" and llm.requests[0]["body"]["logprobs"] is True


def test_null_choices_for_json_schema_steps_down_once(llm: fake.FakeLLMServer) -> None:
    llm.set_responder(modelscope_like)
    c = client(llm)
    assert c.chat(MESSAGES, SCHEMA).text == '{"a": "ok"}'
    assert c.chat(MESSAGES, SCHEMA).text == '{"a": "ok"}'
    assert [fmt(r) for r in llm.requests] == ["json_schema", "json_object", "json_object"]  # refusal paid once


def capping_top_logprobs(body: dict) -> fake.Reply:
    """An endpoint that returns logprobs but at most 5 alternatives per token, and says so in a 400."""
    if body.get("top_logprobs", 0) > 5:
        return fake.error(400, "<400> InternalError.Algo.InvalidParameter: top_logprobs should be in [0, 5]")
    return fake.chat('{"a": "ok"}', logprobs=[('{"a": "', -0.01), ("ok", -0.2, [("ok", -0.2), ("no", -1.8)]),
                                             ('"}', -0.01)])


def test_an_endpoint_capping_top_logprobs_is_asked_for_fewer_not_none(llm: fake.FakeLLMServer) -> None:
    llm.set_responder(capping_top_logprobs)
    c = client(llm)
    reply = c.chat(MESSAGES, SCHEMA)
    assert c.logprobs is True and reply.tokens  # the scores still come from the model's distribution
    assert [r["body"]["top_logprobs"] for r in llm.requests] == [20, 5]
    c.chat([{"role": "user", "content": "another task"}], SCHEMA)
    assert [r["body"]["top_logprobs"] for r in llm.requests] == [20, 5, 5]  # the refusal is paid once


def test_refusals_step_down_to_text_and_drop_logprobs(llm: fake.FakeLLMServer) -> None:
    llm.set_responder(strict_text_only)
    c = client(llm)
    assert "ok" in c.chat(MESSAGES, SCHEMA).text
    assert c.mode == OutputMode.TEXT and c.logprobs is False
    calls = llm.chat_calls
    c.chat(MESSAGES, SCHEMA)
    assert llm.chat_calls == calls + 1  # remembered


# llama-cpp-python 0.3.36's server, as measured in tests/real_model: an unknown response_format
# type fails its request validation, reported as a 500 naming the field.
LLAMA_CPP_REFUSAL = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
)


def llama_cpp_like(body: dict) -> fake.Reply:
    """llama_cpp.server: json_schema is a 500; a schema inside json_object is honoured."""
    kind = (body.get("response_format") or {}).get("type")
    return fake.error(500, LLAMA_CPP_REFUSAL) if kind == "json_schema" else fake.chat('{"a": "ok"}')


def test_the_ladder_and_what_each_rung_sends() -> None:
    walked: list[OutputMode] = []  # what a client refused at every rung goes through, strongest first
    mode: OutputMode | None = OutputMode.JSON_SCHEMA
    while mode is not None:
        walked.append(mode)
        mode = step_down(mode)
    assert walked == [OutputMode.JSON_SCHEMA, OutputMode.JSON_OBJECT_SCHEMA, OutputMode.JSON_OBJECT, OutputMode.TEXT]
    assert response_format(OutputMode.JSON_OBJECT_SCHEMA, SCHEMA) == {"type": "json_object", "schema": SCHEMA}
    assert response_format(OutputMode.JSON_OBJECT, SCHEMA) == {"type": "json_object"}
    assert response_format(OutputMode.TEXT, SCHEMA) is None
    # ModelScope starts below the schema rungs: it never sees a key it does not document.
    modelscope = initial_mode("https://api-inference.modelscope.cn/v1")
    assert response_format(modelscope, SCHEMA) == {"type": "json_object"}


def test_llama_cpp_500_for_json_schema_steps_down_to_json_object_with_schema(llm: fake.FakeLLMServer) -> None:
    llm.set_responder(llama_cpp_like)
    c = client(llm)
    assert c.chat(MESSAGES, SCHEMA).text == '{"a": "ok"}'
    assert c.chat(MESSAGES, SCHEMA).mode == "json_object_schema"
    sent = [r["body"]["response_format"] for r in llm.requests]
    assert [f["type"] for f in sent] == ["json_schema", "json_object", "json_object"]  # refusal paid once
    assert sent[1]["schema"] == SCHEMA and sent[2]["schema"] == SCHEMA
    assert c.mode == OutputMode.JSON_OBJECT_SCHEMA


def test_a_plain_server_error_is_not_a_refusal(llm: fake.FakeLLMServer) -> None:
    llm.set_default(fake.error(500, "upstream model crashed"))
    c = client(llm)
    with pytest.raises(PredictionError) as caught:
        c.chat(MESSAGES, SCHEMA)
    assert caught.value.kind == ErrorKind.SERVER
    assert llm.chat_calls == 1 and c.mode == OutputMode.JSON_SCHEMA


def test_real_errors_are_not_mistaken_for_refusals(llm: fake.FakeLLMServer) -> None:
    llm.set_default(fake.model_unavailable("Qwen/X"))
    c = client(llm)
    try:
        c.chat(MESSAGES, SCHEMA)
    except Exception as exc:  # noqa: BLE001
        assert "模型不可用" in str(exc)
    assert llm.chat_calls == 1 and c.mode == OutputMode.JSON_SCHEMA


ANALYSIS = config("text_analysis")
ANSWER = {"category": ["技术", "市场"], "analysis": "延迟下降，计划出海。"}


def test_predict_in_each_output_mode(llm: fake.FakeLLMServer, tmp_path) -> None:
    responders = {
        "json_schema": lambda body: fake.chat(json.dumps(ANSWER, ensure_ascii=False)),
        "json_object": modelscope_like_for(ANSWER),
        "text": text_only_for(ANSWER),
    }
    for expected_mode, responder in responders.items():
        llm.reset()
        llm.set_responder(responder)
        b = Backend({"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url}, tmp_path / expected_mode)
        try:
            preds = b.predict(ANALYSIS, [{"id": i, "data": {"text": "新版本延迟降低"}} for i in range(3)])
        finally:
            b.stop()
        for p in preds:
            assert LabelInterface(ANALYSIS).validate_prediction(p, return_errors=True) == []
            assert {r["from_name"] for r in p["result"]} == {"category", "analysis"}, expected_mode
        assert fmt(llm.requests[-1]) == ("text" if expected_mode == "text" else expected_mode)


def modelscope_like_for(answer: dict):  # noqa: ANN201
    def respond(body: dict) -> fake.Reply:
        if (body.get("response_format") or {}).get("type") == "json_schema":
            return fake.null_choices()
        return fake.chat(json.dumps(answer, ensure_ascii=False))

    return respond


def text_only_for(answer: dict):  # noqa: ANN201
    def respond(body: dict) -> fake.Reply:
        if body.get("response_format"):
            return fake.error(400, "response_format unsupported")
        return fake.chat("好的，结果如下：\n```json\n" + json.dumps(answer, ensure_ascii=False) + "\n```")

    return respond


def test_scores_from_logprobs_per_region(backend: Backend, llm: fake.FakeLLMServer) -> None:
    cfg = config("text_classification")
    tokens = [('{"sentiment": "', -0.01), ("正面", -0.5), ('"}', -0.01)]
    llm.enqueue(fake.chat('{"sentiment": "正面"}', logprobs=tokens))
    [pred] = backend.predict(cfg, [{"id": 1, "data": {"text": "好"}}])
    assert math.isclose(pred["result"][0]["score"], math.exp(-0.5), abs_tol=1e-3)
    assert math.isclose(pred["score"], math.exp(-0.5), abs_tol=1e-3)


def test_scores_without_logprobs_use_self_reported_confidence_and_coverage(
    backend: Backend, llm: fake.FakeLLMServer
) -> None:
    cfg = config("error_debugging")
    llm.enqueue(fake.chat('{"error_type": "依赖问题", "diagnosis": "装 requests", "_confidence": 0.8}'))
    llm.enqueue(fake.chat('{"error_type": "不存在的类别", "diagnosis": "装 requests", "_confidence": 0.8}'))
    llm.enqueue(fake.chat('{"error_type": "依赖问题", "diagnosis": "x"}'))
    preds = backend.predict(cfg, [{"id": i, "data": {"error_log": "ModuleNotFoundError"}} for i in range(3)])
    assert [p["score"] for p in preds] == [0.8, 0.4, 1.0]
    assert all("score" not in r for p in preds for r in p["result"])


def refusing_repeat_penalty(status: int) -> Callable[[dict], fake.Reply]:
    """OpenAI's own API (400) or a strict validator (422, or a 500 as llama-cpp-python reports them)."""

    def respond(body: dict) -> fake.Reply:
        if "repeat_penalty" in body:
            return fake.error(status, "Unrecognized request argument supplied: repeat_penalty")
        return fake.chat('{"a": "ok"}')

    return respond


def test_repeat_penalty_is_neutral_by_default_and_never_sent_to_modelscope(llm: fake.FakeLLMServer) -> None:
    """llama-cpp-python's server defaults to 1.1, which made entity lists stop at two: 1.0 is sent."""
    client(llm).chat(MESSAGES, SCHEMA)
    assert llm.requests[-1]["body"]["repeat_penalty"] == 1.0
    for value, sent in (("off", None), ("1.05", 1.05), ("auto", 1.0)):
        env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_REPEAT_PENALTY": value}
        LLMClient(load_settings(env)).chat(MESSAGES, SCHEMA)
        assert llm.requests[-1]["body"].get("repeat_penalty") == sent, value
    modelscope = load_settings({"MODELSCOPE_API_URL": "https://api-inference.modelscope.cn/v1"})
    assert modelscope.sent_repeat_penalty() is None
    assert "repeat_penalty" not in modelscope.generation_fingerprint()  # its projects keep their model_version
    local = load_settings({"MODELSCOPE_API_URL": llm.base_url})
    assert local.generation_fingerprint()["repeat_penalty"] == 1.0  # answers change there: a new version


@pytest.mark.parametrize("status", [400, 422, 500])
def test_an_endpoint_refusing_repeat_penalty_is_asked_again_without_it_once(
    llm: fake.FakeLLMServer, status: int
) -> None:
    llm.set_responder(refusing_repeat_penalty(status))
    c = LLMClient(Settings(api_key=TEST_KEY, base_url=llm.base_url, max_retries=2))  # a refusal is not retried
    assert c.chat(MESSAGES, SCHEMA).text == '{"a": "ok"}'
    assert c.chat(MESSAGES, SCHEMA).text == '{"a": "ok"}'
    sent = ["repeat_penalty" in r["body"] for r in llm.requests]
    assert sent == [True, False, False]  # the refusal is paid once, then remembered
    assert c.mode == OutputMode.JSON_SCHEMA  # not mistaken for a refused output mode


NER = """<View><Text name="text" value="$text"/>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/><Label value="LOC"/></Labels></View>"""


def test_a_reply_cut_at_max_tokens_keeps_its_complete_entities(backend: Backend, llm: fake.FakeLLMServer) -> None:
    """A small model looping over one entity until max_tokens: the entities it completed are kept, and said."""
    looped = '{"ner": [{"label": "PER", "text": "张三"}, ' + '{"label": "LOC", "text": "北京"}, ' * 40 + '{"label": "L'
    llm.enqueue(fake.chat(looped, finish_reason="length"))
    [pred] = backend.predict(NER, [{"id": 7, "data": {"text": "张三昨天去了北京。"}}])
    spans = sorted((r["value"]["text"], r["value"]["labels"][0]) for r in pred["result"])
    assert spans == [("北京", "LOC"), ("张三", "PER")]
    assert "task 7: reply cut at LLM_MAX_TOKENS" in backend.logs()
