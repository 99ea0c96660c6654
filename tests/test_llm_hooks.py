"""What the LLM client tells its listeners, and the retry policy's decisions (quota, throttle, outage, deadline)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from my_ml_backend.llm.cache import SQLITE_FILE, ResponseCache, SQLiteStore
from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.errors import Failure, deadline_reached, failure_of
from my_ml_backend.llm.hooks import (
    CacheLookedUp,
    Hooks,
    ReplyReceived,
    RequestFailed,
    RequestSent,
    RetryScheduled,
)
from my_ml_backend.llm.pacing import RetryPolicy
from my_ml_backend.settings import Settings
from my_ml_backend.telemetry import metrics as m
from my_ml_backend.telemetry.metrics import Tally
from tests.conftest import TEST_KEY
from tests.fake_llm import server as fake

MESSAGES = [{"role": "user", "content": "hi"}]
EVENTS = (RequestSent, RequestFailed, RetryScheduled, ReplyReceived, CacheLookedUp)


def recorder(hooks: Hooks) -> list[object]:
    seen: list[object] = []
    for event_type in EVENTS:
        hooks.on(event_type, seen.append)
    return seen


def status_error(status: int, text: str = "", headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, text=text, request=request)
    return openai.APIStatusError(text or "error", response=response, body={"error": {"message": text}})


def test_a_call_reports_each_request_failure_retry_and_reply(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    hooks = Hooks()
    seen = recorder(hooks)
    llm.enqueue(fake.throttled(0.01), fake.server_error(502), fake.chat("ok", usage={
        "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}))
    settings = Settings(api_key=TEST_KEY, base_url=llm.base_url, model="Qwen/Test", max_retries=2)
    client = LLMClient(settings, cache=ResponseCache(SQLiteStore(tmp_path / SQLITE_FILE)), hooks=hooks)
    tally = Tally()
    assert client.chat(MESSAGES, tally=tally).text == "ok"
    assert [type(e) for e in seen] == [CacheLookedUp, RequestSent, RequestFailed, RetryScheduled, RequestSent,
                                       RequestFailed, RetryScheduled, RequestSent, ReplyReceived]
    failed = [e for e in seen if isinstance(e, RequestFailed)]
    assert [e.failure for e in failed] == [Failure.THROTTLE, Failure.OUTAGE]
    retries = [e for e in seen if isinstance(e, RetryScheduled)]
    assert [e.attempt for e in retries] == [1, 2] and retries[0].delay == pytest.approx(0.01)
    reply = seen[-1]
    assert isinstance(reply, ReplyReceived)
    assert (reply.model, reply.prompt_tokens, reply.completion_tokens) == ("Qwen/Test", 7, 3)
    assert all(e.batch is tally for e in seen)  # the batch's counters travel with every event
    assert client.chat(MESSAGES).cached and isinstance(seen[-1], CacheLookedUp) and seen[-1].hit
    assert llm.chat_calls == 3


def test_the_process_telemetry_counts_into_the_batch_tally(llm: fake.FakeLLMServer) -> None:
    """Without hooks of its own a client reports to the process's, where /metrics and the batch tally listen."""
    llm.enqueue(fake.throttled(0.01), fake.chat("ok", usage={"prompt_tokens": 5, "completion_tokens": 2,
                                                             "total_tokens": 7}))
    client = LLMClient(Settings(api_key=TEST_KEY, base_url=llm.base_url, max_retries=2))
    before = m.METRICS.get(m.API_REQUESTS)
    tally = Tally()
    client.chat(MESSAGES, tally=tally)
    counts = {name: tally.get(name) for name in (m.API_REQUESTS, m.API_RETRIES, m.API_THROTTLED, m.PROMPT_TOKENS,
                                                  m.COMPLETION_TOKENS)}
    assert counts == {m.API_REQUESTS: 2, m.API_RETRIES: 1, m.API_THROTTLED: 1, m.PROMPT_TOKENS: 5,
                      m.COMPLETION_TOKENS: 2}
    assert m.METRICS.get(m.API_REQUESTS) == before + 2


def test_a_failing_listener_costs_no_call(llm: fake.FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()

    def broken(_event: object) -> None:
        raise RuntimeError("listener bug")

    hooks.on(RequestSent, broken)
    seen = recorder(hooks)
    llm.enqueue(fake.chat("ok"))
    client = LLMClient(Settings(api_key=TEST_KEY, base_url=llm.base_url), hooks=hooks)
    assert client.chat(MESSAGES).text == "ok"
    assert Counter(type(e) for e in seen) == Counter({RequestSent: 1, ReplyReceived: 1})  # the others still heard
    assert "listener bug" in caplog.text
    hooks.off(RequestSent, broken)
    llm.enqueue(fake.chat("again"))
    caplog.clear()
    client.chat([{"role": "user", "content": "again"}])
    assert "listener bug" not in caplog.text


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (status_error(429, "You exceeded your current quota"), Failure.QUOTA),
        (status_error(429, "Too Many Requests", {"modelscope-ratelimit-model-requests-remaining": "0"}),
         Failure.QUOTA),
        (status_error(429, "Request limit exceeded."), Failure.THROTTLE),
        (status_error(502, "Bad gateway"), Failure.OUTAGE),
        (status_error(408, "Request timeout"), Failure.OUTAGE),
        (status_error(500, "Input validation error: response_format.type json_schema"), Failure.FINAL),
        (status_error(400, "Bad request"), Failure.FINAL),
        (openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/")), Failure.OUTAGE),
        (openai.APITimeoutError(request=httpx.Request("POST", "http://127.0.0.1/")), Failure.OUTAGE),
        (ValueError("not a request failure"), Failure.FINAL),
    ],
)
def test_failures_are_told_apart(exc: BaseException, failure: Failure) -> None:
    assert failure_of(exc) is failure


class Attempts:
    """An attempt that raises each of `errors` in turn, then returns "ok"; records when it ran."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.times: list[float] = []

    def __call__(self) -> str:
        self.times.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def throttle(after: float | None = None, **headers: str) -> openai.APIStatusError:
    if after is not None:
        headers["retry-after"] = str(after)
    return status_error(429, "Request limit exceeded.", headers)


def test_throttles_and_outages_have_their_own_budgets() -> None:
    attempts = Attempts(throttle(0.01), throttle(0.01), throttle(0.01), status_error(503, "down"))
    assert RetryPolicy(max_retries=1, deadline=time.monotonic() + 30).run(attempts) == "ok"
    assert len(attempts.times) == 5  # three throttles did not use up the single outage retry
    attempts = Attempts(throttle(0.01), throttle(0.01), throttle(0.01))
    with pytest.raises(openai.APIStatusError):  # without a deadline, throttles get `max_retries` too
        RetryPolicy(max_retries=1, deadline=None).run(attempts)
    assert len(attempts.times) == 2


def test_no_wait_passes_the_deadline() -> None:
    attempts = Attempts(throttle(2.0), throttle(0.01))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError):
        RetryPolicy(max_retries=5, deadline=started + 1.0).run(attempts)
    assert len(attempts.times) == 1  # a 2 s wait would end past the deadline: not taken
    assert time.monotonic() - started < 1.0  # nor slept in part


@pytest.mark.parametrize(
    "exc",
    [
        status_error(429, "You exceeded your current quota"),  # quota spent: no wait brings it back
        throttle(3600),  # a quota in disguise
        throttle(0.01, **{"x-should-retry": "false"}),  # the server said so
        status_error(400, "Bad request"),
        deadline_reached(),  # the limiter found no slot before the deadline
    ],
)
def test_what_is_never_repeated(exc: BaseException) -> None:
    attempts = Attempts(exc)
    with pytest.raises(type(exc)):
        RetryPolicy(max_retries=5, deadline=time.monotonic() + 30).run(attempts)
    assert len(attempts.times) == 1


def test_without_retry_after_the_wait_grows() -> None:
    attempts = Attempts(status_error(503, "down"), status_error(503, "down"))
    waits: list[float] = []
    policy = RetryPolicy(max_retries=5, deadline=None, before_retry=lambda _e, _n, delay: waits.append(delay))
    assert policy.run(attempts) == "ok"
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 1.5  # 0.5 s doubling per attempt, plus up to 0.5 s
    gaps = [b - a for a, b in zip(attempts.times, attempts.times[1:], strict=False)]
    assert all(gap >= wait for gap, wait in zip(gaps, waits, strict=True))  # and it was slept
