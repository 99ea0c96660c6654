"""One chat call to an OpenAI-compatible endpoint, with ModelScope's quirks handled.

The `openai` client does the heavy lifting (HTTP, timeouts, retries with exponential
backoff and jitter honouring `Retry-After`/`retry-after-ms`). We add only what it
cannot know: an exhausted ModelScope quota must not be retried (it spends nothing but
time), and Qwen3 "thinking" models refuse non-streamed calls unless told
`enable_thinking: false`, which we learn once per client and then always send.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import openai

from .errors import QUOTA_HEADERS, bad_response, classify, is_quota_exhausted, is_thinking_refusal, missing_key
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ChatReply:
    """What the rest of the backend needs from a completion."""

    text: str
    usage: Usage = field(default_factory=Usage)
    # Mean token probability of the answer, when the endpoint returned logprobs.
    token_confidence: float | None = None
    quota_remaining: int | None = None


@dataclass
class CallCounter:
    """HTTP requests actually sent (retries included), counted from the transport hook."""

    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self) -> None:
        with self._lock:
            self.requests += 1


def _mark_quota_not_retryable(response: Any) -> None:
    """Response hook (an httpx response): tell the openai client not to retry an exhausted quota."""
    if response.status_code != 429:
        return
    response.read()
    if is_quota_exhausted(429, response.text, response.headers):
        response.headers["x-should-retry"] = "false"


class LLMClient:
    """Thread-safe chat client shared by all predictions of one backend process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counter = CallCounter()
        self._extra_body: dict[str, Any] = {}
        self._client: openai.OpenAI | None = None
        if settings.has_api_key:
            http_client = openai.DefaultHttpxClient(
                event_hooks={"request": [lambda _request: self.counter.add()], "response": [_mark_quota_not_retryable]}
            )
            self._client = openai.OpenAI(
                api_key=settings.api_key,
                base_url=settings.base_url,
                timeout=settings.timeout,
                max_retries=settings.max_retries,
                http_client=http_client,
            )

    def chat(self, messages: list[dict[str, str]]) -> ChatReply:
        """Send one chat completion; raise `PredictionError` with a user-facing message on failure."""
        if self._client is None:
            raise missing_key()
        try:
            return self._create(messages)
        except openai.BadRequestError as exc:
            if not is_thinking_refusal(exc) or self._extra_body.get("enable_thinking") is False:
                raise self._classify(exc) from None
            logger.info("模型要求关闭思考模式，改为发送 enable_thinking=false (model needs enable_thinking=false)")
            self._extra_body = {**self._extra_body, "enable_thinking": False}
        except Exception as exc:  # noqa: BLE001 - every failure becomes a user-facing message
            raise self._classify(exc) from None
        try:
            return self._create(messages)
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc) from None

    def _classify(self, exc: BaseException):  # noqa: ANN202
        s = self.settings
        return classify(exc, model=s.model, base_url=s.base_url, timeout=s.timeout)

    def _create(self, messages: list[dict[str, str]]) -> ChatReply:
        s = self.settings
        assert self._client is not None
        params: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature}
        if s.max_tokens:
            params["max_tokens"] = s.max_tokens
        if s.top_p is not None:
            params["top_p"] = s.top_p
        if self._extra_body:
            params["extra_body"] = dict(self._extra_body)
        raw = self._client.chat.completions.with_raw_response.create(**params)
        completion = raw.parse()
        quota = _quota_remaining(raw.headers)
        if quota == 0:
            logger.warning("⚠️ ModelScope 配额即将用完：剩余 0 次 (quota remaining: 0)")
        choices = getattr(completion, "choices", None)
        if not choices or choices[0].message is None:
            raise bad_response("no choices in reply")
        text = choices[0].message.content or ""
        if not text.strip():
            raise bad_response("empty content")
        usage = Usage()
        if completion.usage is not None:
            usage = Usage(completion.usage.prompt_tokens or 0, completion.usage.completion_tokens or 0)
        return ChatReply(text=text, usage=usage, token_confidence=_token_confidence(choices[0]), quota_remaining=quota)


def _quota_remaining(headers: Any) -> int | None:
    values = [headers.get(h) for h in QUOTA_HEADERS]
    numbers = [int(v) for v in values if v is not None and str(v).strip().lstrip("-").isdigit()]
    return min(numbers) if numbers else None


def _token_confidence(choice: Any) -> float | None:
    """Geometric-mean token probability of the answer, if the endpoint sent logprobs."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    logprobs = [t.logprob for t in content if getattr(t, "logprob", None) is not None]
    if not logprobs:
        return None
    return math.exp(sum(logprobs) / len(logprobs))


@lru_cache(maxsize=8)
def shared_client(settings: Settings) -> LLMClient:
    """One client (one connection pool, one learned `enable_thinking`) per settings."""
    return LLMClient(settings)
