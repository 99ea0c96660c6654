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

from .errors import (
    QUOTA_HEADERS,
    ErrorKind,
    bad_response,
    classify,
    is_quota_exhausted,
    is_thinking_refusal,
    missing_key,
    server_message,
)
from .output_modes import LADDER, OutputMode, initial_mode, is_alibaba_host, response_format, step_down
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
    # (token, logprob) pairs of the answer, when the endpoint returned logprobs.
    tokens: list[tuple[str, float]] = field(default_factory=list)
    quota_remaining: int | None = None
    mode: str = "text"

    @property
    def token_confidence(self) -> float | None:
        """Geometric-mean token probability of the whole answer."""
        return mean_probability([lp for _, lp in self.tokens])


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
        self.mode = initial_mode(settings.base_url, settings.output_mode)
        self.logprobs = settings.logprobs if settings.logprobs is not None else not is_alibaba_host(settings.base_url)
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

    def chat(self, messages: list[dict[str, str]], schema: dict[str, Any] | None = None) -> ChatReply:
        """Send one chat completion; raise `PredictionError` with a user-facing message on failure.

        With a `schema`, the answer is requested as JSON in the best mode the endpoint
        accepts. A refusal of an optional feature (a response format, logprobs,
        thinking mode) is learned and the call repeated without it, at most once each.
        """
        if self._client is None:
            raise missing_key()
        for _ in range(len(LADDER) + 2):
            mode = self.mode if schema is not None else OutputMode.TEXT
            try:
                return self._create(messages, mode, schema)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a user-facing message
                if not self._adapt(exc, mode):
                    raise self._classify(exc) from None
        raise bad_response("endpoint refused every output mode")

    def _adapt(self, exc: BaseException, mode: OutputMode) -> bool:
        """Drop the feature `exc` refused, if any; True when the call is worth repeating."""
        if is_thinking_refusal(exc) and self._extra_body.get("enable_thinking") is not False:
            logger.info("模型要求关闭思考模式，改为发送 enable_thinking=false (sending enable_thinking=false)")
            self._extra_body = {**self._extra_body, "enable_thinking": False}
            return True
        if isinstance(exc, openai.BadRequestError) and self.logprobs and "logprob" in server_message(exc).lower():
            logger.info("端点不支持 logprobs，已关闭 (endpoint refused logprobs: disabled)")
            self.logprobs = False
            return True
        kind = self._classify(exc).kind
        lower = step_down(mode)
        if kind in (ErrorKind.BAD_REQUEST, ErrorKind.BAD_RESPONSE) and lower is not None and mode == self.mode:
            logger.info("端点不接受输出模式 %s，改用 %s (endpoint refused %s, using %s)", mode, lower, mode, lower)
            self.mode = lower
            return True
        return False

    def _classify(self, exc: BaseException):  # noqa: ANN202
        s = self.settings
        return classify(exc, model=s.model, base_url=s.base_url, timeout=s.timeout)

    def _create(self, messages: list[dict[str, str]], mode: OutputMode, schema: dict[str, Any] | None) -> ChatReply:
        s = self.settings
        assert self._client is not None
        params: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature}
        if (fmt := response_format(mode, schema)) is not None:
            params["response_format"] = fmt
        if self.logprobs:
            params["logprobs"] = True
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
        return ChatReply(text=text, usage=usage, tokens=_tokens(choices[0]), quota_remaining=quota, mode=str(mode))


def _quota_remaining(headers: Any) -> int | None:
    values = [headers.get(h) for h in QUOTA_HEADERS]
    numbers = [int(v) for v in values if v is not None and str(v).strip().lstrip("-").isdigit()]
    return min(numbers) if numbers else None


def _tokens(choice: Any) -> list[tuple[str, float]]:
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    return [(t.token, t.logprob) for t in content if getattr(t, "logprob", None) is not None]


def mean_probability(logprobs: list[float]) -> float | None:
    """exp(mean logprob): the geometric-mean probability of a run of tokens."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else None


@lru_cache(maxsize=8)
def shared_client(settings: Settings) -> LLMClient:
    """One client (one connection pool, one learned `enable_thinking`) per settings."""
    return LLMClient(settings)
