"""Every row of the ModelScope error table, against the local OpenAI-compatible server."""

from __future__ import annotations

import pytest

from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.errors import ErrorKind, PredictionError
from my_ml_backend.settings import Settings
from tests.conftest import TEST_KEY
from tests.fake_llm import server as fake

MESSAGES = [{"role": "user", "content": "hi"}]


def client(llm: fake.FakeLLMServer, **kw: object) -> LLMClient:
    params = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "Qwen/Test", "timeout": 1.0, "max_retries": 2}
    params.update(kw)
    return LLMClient(Settings(**params))  # type: ignore[arg-type]


def failure(llm: fake.FakeLLMServer, *replies: fake.Reply, **kw: object) -> PredictionError:
    llm.enqueue(*replies)
    with pytest.raises(PredictionError) as info:
        client(llm, **kw).chat(MESSAGES)
    return info.value


def test_success_reads_text_usage_and_sends_settings(llm: fake.FakeLLMServer) -> None:
    llm.enqueue(fake.chat('{"a": 1}', usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}))
    reply = client(llm, temperature=0.1, max_tokens=50, top_p=0.8).chat(MESSAGES)
    assert reply.text == '{"a": 1}' and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 3)
    body = llm.requests[-1]["body"]
    assert (body["model"], body["temperature"], body["max_tokens"], body["top_p"]) == ("Qwen/Test", 0.1, 50, 0.8)
    assert llm.requests[-1]["headers"]["authorization"] == f"Bearer {TEST_KEY}"


def test_missing_key_is_checked_before_calling(llm: fake.FakeLLMServer) -> None:
    with pytest.raises(PredictionError) as info:
        client(llm, api_key=None).chat(MESSAGES)
    assert info.value.kind == ErrorKind.MISSING_KEY and "API Key未设置" in info.value.message
    assert "MODELSCOPE_API_KEY" in info.value.message
    assert llm.chat_calls == 0


def test_bad_token(llm: fake.FakeLLMServer) -> None:
    err = failure(llm, fake.auth_failed())
    assert err.kind == ErrorKind.AUTH and "API认证失败" in err.message and err.fatal
    assert llm.chat_calls == 1  # not retried


@pytest.mark.parametrize("status", [401, 403])
def test_unbound_alibaba_cloud_account(llm: fake.FakeLLMServer, status: int) -> None:
    err = failure(llm, fake.error(status, "Please bind your Alibaba Cloud account before use."))
    assert err.kind == ErrorKind.PERMISSION and "无权限访问此模型" in err.message and "绑定阿里云" in err.message


@pytest.mark.parametrize(
    "reply",
    [
        fake.model_unavailable("Qwen/Nope"),
        fake.error(400, "Invalid model id: Qwen/Nope"),
        fake.error(404, "Not Found"),
        fake.error(400, "Model id : Qwen/Nope , has no provider supported", key="errors"),
    ],
)
def test_model_not_served(llm: fake.FakeLLMServer, reply: fake.Reply) -> None:
    err = failure(llm, reply, model="Qwen/Nope")
    assert err.kind == ErrorKind.MODEL_UNAVAILABLE and "模型不可用" in err.message and "Qwen/Nope" in err.message


def test_quota_used_up_is_not_retried(llm: fake.FakeLLMServer) -> None:
    err = failure(llm, fake.quota_exhausted(), fake.chat("should not be reached"))
    assert err.kind == ErrorKind.QUOTA and "今日额度已用完" in err.message and "恢复" in err.message and err.fatal
    assert llm.chat_calls == 1


def test_quota_header_alone_means_quota(llm: fake.FakeLLMServer) -> None:
    reply = fake.error(429, "Too Many Requests", headers={"modelscope-ratelimit-model-requests-remaining": "0"})
    err = failure(llm, reply, fake.chat("x"))
    assert err.kind == ErrorKind.QUOTA and llm.chat_calls == 1


def test_throttled_is_retried_with_retry_after(llm: fake.FakeLLMServer) -> None:
    llm.enqueue(fake.throttled(0.2), fake.throttled(0.2), fake.chat("ok"))
    assert client(llm).chat(MESSAGES).text == "ok"
    assert llm.chat_calls == 3
    gap = llm.requests[1]["time"] - llm.requests[0]["time"]
    assert gap >= 0.18  # waited as the server asked


def test_throttled_until_retries_run_out(llm: fake.FakeLLMServer) -> None:
    err = failure(llm, *[fake.throttled(0.05)] * 3)
    assert err.kind == ErrorKind.THROTTLED and "限流" in err.message and not err.fatal
    assert llm.chat_calls == 3


def test_server_error_retried_then_reported(llm: fake.FakeLLMServer) -> None:
    llm.enqueue(fake.server_error(502), fake.chat("ok"))
    assert client(llm).chat(MESSAGES).text == "ok"
    err = failure(llm, *[fake.server_error(500)] * 3)
    assert err.kind == ErrorKind.SERVER and "HTTP 500" in err.message


def test_timeout(llm: fake.FakeLLMServer) -> None:
    err = failure(llm, fake.timeout(1.5), max_retries=0, timeout=0.3)
    assert err.kind == ErrorKind.TIMEOUT and "请求超时" in err.message


def test_connection_failure(llm: fake.FakeLLMServer) -> None:
    err = failure(llm, fake.Reply(drop=True), max_retries=0)
    assert err.kind == ErrorKind.CONNECTION and "网络连接失败" in err.message
    with pytest.raises(PredictionError) as info:
        client(llm, base_url="http://127.0.0.1:9/v1", max_retries=0).chat(MESSAGES)
    assert info.value.kind == ErrorKind.CONNECTION


@pytest.mark.parametrize(
    "reply", [fake.null_choices(), fake.malformed(), fake.chat(""), fake.Reply(body={"choices": []})]
)
def test_empty_or_malformed_reply(llm: fake.FakeLLMServer, reply: fake.Reply) -> None:
    err = failure(llm, reply, max_retries=0)
    assert err.kind == ErrorKind.BAD_RESPONSE and "响应格式异常" in err.message


def test_thinking_model_learns_enable_thinking_false(llm: fake.FakeLLMServer) -> None:
    c = client(llm)
    llm.enqueue(fake.thinking_not_supported(), fake.chat("ok"), fake.chat("again"))
    assert c.chat(MESSAGES).text == "ok"
    assert "enable_thinking" not in llm.requests[0]["body"]
    assert llm.requests[1]["body"]["enable_thinking"] is False
    assert c.chat(MESSAGES).text == "again"  # remembered: no second refusal paid for
    assert llm.requests[2]["body"]["enable_thinking"] is False and llm.chat_calls == 3


def test_logprobs_are_read_token_by_token(llm: fake.FakeLLMServer) -> None:
    llm.enqueue(fake.chat("x", logprobs=[("x", -0.1), ("y", -0.3, [("y", -0.3), ("z", -1.5)])]))
    reply = client(llm).chat(MESSAGES)
    assert reply.tokens == [("x", -0.1, ()), ("y", -0.3, (("y", -0.3), ("z", -1.5)))]
