"""The ModelScope-shaped proxy (a benchmark fixture) in front of the fake LLM, and how our client meets it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.output_modes import OutputMode
from my_ml_backend.settings import Settings
from tests.conftest import TEST_KEY
from tests.fake_llm import server as fake
from tests.real_model.modelscope_adapter import ModelScopeAdapter

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def adapter(llm: fake.FakeLLMServer) -> Iterator[ModelScopeAdapter]:
    with ModelScopeAdapter(llm.base_url) as proxy:
        yield proxy


def sdk(adapter: ModelScopeAdapter) -> openai.OpenAI:
    return openai.OpenAI(base_url=adapter.base_url, api_key="sk-test", max_retries=0)


def test_logprobs_dropped_both_ways(llm: fake.FakeLLMServer, adapter: ModelScopeAdapter) -> None:
    llm.enqueue(fake.chat("yes", logprobs=[("yes", -0.1)]))
    reply = sdk(adapter).chat.completions.create(model="m", messages=MESSAGES, logprobs=True, top_logprobs=5,
                                                 temperature=0)
    sent = llm.requests[-1]["body"]
    assert "logprobs" not in sent and "top_logprobs" not in sent and sent["temperature"] == 0
    assert reply.choices[0].message.content == "yes" and reply.choices[0].logprobs is None


def test_json_schema_answered_with_null_choices_without_asking_the_model(
        llm: fake.FakeLLMServer, adapter: ModelScopeAdapter) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    response = sdk(adapter).chat.completions.with_raw_response.create(model="m", messages=MESSAGES,
                                                                        response_format=fmt)  # type: ignore[arg-type]
    assert response.status_code == 200 and response.http_response.json()["choices"] is None
    assert llm.chat_calls == 0 and adapter.seen["json_schema"] == 1


@pytest.mark.parametrize("fmt", [{"type": "json_object"}, {"type": "json_object", "schema": SCHEMA}])
def test_json_object_forwarded_without_a_grammar(llm: fake.FakeLLMServer, adapter: ModelScopeAdapter,
                                                 fmt: dict) -> None:
    llm.enqueue(fake.chat('The answer: {"a": "x"}'))
    reply = sdk(adapter).chat.completions.create(model="m", messages=MESSAGES, response_format=fmt)  # type: ignore[arg-type]
    assert "response_format" not in llm.requests[-1]["body"]
    assert reply.choices[0].message.content == 'The answer: {"a": "x"}'


def test_plain_requests_and_errors_pass_unchanged(llm: fake.FakeLLMServer, adapter: ModelScopeAdapter) -> None:
    llm.enqueue(fake.chat("plain"), fake.throttled(retry_after=3))
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 24, "extra": 1}
    sdk(adapter).chat.completions.create(model="m", messages=MESSAGES, max_tokens=24, extra_body={"extra": 1})
    assert llm.requests[-1]["body"] == body
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(adapter).chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "3"
    assert [m.id for m in sdk(adapter).models.list().data] == [fake.DEFAULT_MODEL]


def test_our_client_steps_down_to_an_unenforced_json_object_and_scores_without_logprobs(
        llm: fake.FakeLLMServer, adapter: ModelScopeAdapter) -> None:
    """A local-looking URL starts at json_schema with logprobs: the adapter's empty 200 makes the client step
    down once and keep json_object (which the adapter forwards as free text), and no logprobs ever come back."""
    llm.set_default(fake.chat('{"a": "ok"}', logprobs=[('{"a": "ok"}', -0.01)]))
    client = LLMClient(Settings(api_key=TEST_KEY, base_url=adapter.base_url, max_retries=0))  # type: ignore[arg-type]
    first = client.chat(MESSAGES, SCHEMA)
    second = client.chat(MESSAGES, SCHEMA)
    assert client.mode is OutputMode.JSON_OBJECT_SCHEMA
    assert adapter.seen == {"json_schema": 1, "json_object": 2}
    assert first.text == second.text == '{"a": "ok"}' and first.tokens == second.tokens == []
    assert all("response_format" not in r["body"] and "logprobs" not in r["body"] for r in llm.requests)


def test_an_unreachable_upstream_is_a_502() -> None:
    with fake.FakeLLMServer() as gone:
        url = gone.base_url
    with ModelScopeAdapter(url) as proxy, pytest.raises(openai.InternalServerError) as caught:
        sdk(proxy).chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 502
