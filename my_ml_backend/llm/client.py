"""One chat call to an OpenAI-compatible endpoint, with ModelScope's quirks handled.

The `openai` client does the HTTP and timeouts; retries are ours (`pacing.RetryPolicy`),
because they must know what the client's own loop cannot: the batch deadline (no retry
that cannot finish before Label Studio gives up), the other workers (a 429 lowers the
concurrency of all of them, a `Retry-After` pauses all of them) and an exhausted
ModelScope quota (never retried: it spends nothing but time). Qwen3 "thinking" models
refuse non-streamed calls unless told `enable_thinking: false`, which we learn once
per client and then always send.

Answers go through the response cache (`llm.cache`): a request already answered
costs no API call. What happens is emitted as events (`llm.hooks`); by default the
process's telemetry and the asking batch's tally count them (`llm.observers`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import openai

from ..settings import Settings, reveal
from ..telemetry.metrics import Tally
from .cache import CachedAnswer, ResponseCache, cache_key, open_cache
from .errors import (
    QUOTA_HEADERS,
    ErrorKind,
    Failure,
    bad_response,
    classify,
    deadline_reached,
    failure_of,
    is_thinking_refusal,
    missing_key,
    server_message,
)
from .hooks import CacheLookedUp, Hooks, ReplyReceived, RequestFailed, RequestSent, RetryScheduled
from .limits import open_limiter
from .observers import process_hooks
from .output_modes import LADDER, OutputMode, initial_mode, response_format, step_down
from .pacing import RetryPolicy, asked_pause
from .pool import ModelPool, pool_models
from .quota import Cost, DayClock, MemoryLedger, QuotaLedger, account_id, header_int, open_ledger, quota_used_up
from .replies import ChatReply, Usage, reply_tokens, worth_keeping

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]

# Alternatives returned per token when logprobs are on: 20 (OpenAI's and vLLM's maximum)
# so that every choice of a label set usually shows up at the answer's first token.
TOP_LOGPROBS = 20
# What is asked instead from an endpoint that refuses 20 by name (some accept at most 5):
# enough for two to five choices at the answer's first token, and far better than no logprobs.
FEWER_TOP_LOGPROBS = 5


@dataclass
class _Call:
    """One `chat()` as it goes down the stack: what its caller gave and what its last request learnt."""

    deadline: float | None
    batch: Tally | None
    tasks: int
    sent_day: str | None = None  # the quota day of its last request: the answer counts against it
    temperature: float | None = None  # None: the settings'
    model: str | None = None  # None: the pool's pick (with its fallbacks); a name: that model only
    sample: int = 0  # > 0: another draw of the same request, cached apart from the first


class LLMClient:
    """Thread-safe chat client shared by all predictions of one backend process.

    Public beyond `chat`: the cache key of a one-task call, and reading or keeping its
    cached answer (`cache_key`, `cached_reply`, `cache_reply`), what packed calls need; and
    what it has learnt of the endpoint (`mode`, `logprobs`), its `pool` and `limiter`.
    """

    def __init__(
        self,
        settings: Settings,
        cache: ResponseCache | None = None,
        ledger: QuotaLedger | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.hooks = hooks if hooks is not None else process_hooks()
        if ledger is None:  # no shared store: this client still learns, for its own lifetime
            ledger = QuotaLedger(MemoryLedger(), DayClock(settings.quota_reset), account_id(settings))
        self.pool = ModelPool(pool_models(settings), ledger)
        self.limiter = open_limiter(settings, self.hooks)  # per process, or shared by all through REDIS_URL
        self._extra_body: dict[str, Any] = {}
        self.mode = initial_mode(settings.base_url, settings.output_mode)
        self.logprobs = settings.wants_logprobs  # until the endpoint refuses them
        self.top_logprobs = TOP_LOGPROBS  # until the endpoint refuses that many
        # Local servers default to 1.1, which penalises the JSON syntax every item of a structured answer repeats:
        # the neutral 1.0 is sent (not to ModelScope/DashScope); a server that refuses the field is asked again
        # without it, once.
        self.repeat_penalty = settings.sent_repeat_penalty()
        self._client: openai.OpenAI | None = None
        if settings.has_api_key:
            self._client = openai.OpenAI(
                api_key=reveal(settings.api_key),
                base_url=settings.base_url,
                timeout=settings.timeout,
                max_retries=0,  # retried by `RetryPolicy`, which knows the deadline and the other workers
            )

    def chat(
        self,
        messages: Messages,
        schema: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
        accept: Callable[[ChatReply], bool] | None = None,
        tally: Tally | None = None,
        tasks: int = 1,
        temperature: float | None = None,
        model: str | None = None,
        sample: int = 0,
    ) -> ChatReply:
        """Send one chat completion; raise `PredictionError` with a user-facing message on failure.

        With a `schema`, the answer is requested as JSON in the best mode the endpoint
        accepts. A refusal of an optional feature (a response format, logprobs,
        thinking mode) is learned and the call repeated without it.
        `deadline` (monotonic): no request or retry starts after it.
        `accept`: whether a reply is good enough to cache (e.g. it parses); others are
        returned but asked again next time. `tally`: the batch's counters.
        `tasks`: how many tasks the call answers (packed calls), for the cost ledger.
        A second opinion on an answer (`predicting.second_opinions`) overrides `temperature`, pins one pool
        `model` (refused or out for today: the error, no other model) and numbers its `sample`; each
        override is part of the cache key, so k draws are k entries and none replaces the task's own.
        """
        if self._client is None:
            raise missing_key()
        return self._chat(messages, schema, accept, _Call(deadline, tally, tasks, None, temperature, model, sample))

    def cache_key(self, messages: Messages, schema: dict[str, Any] | None = None) -> str | None:
        """The response-cache key `chat(messages, schema)` would use now; None without a cache.

        The pool stands for the model: an answer of any of its models serves.
        """
        if self.cache is None:
            return None
        return self._key_of(self._params(messages, self._mode_for(schema), schema, self.settings.model))

    def cached_reply(
        self, messages: Messages, schema: dict[str, Any] | None = None, tally: Tally | None = None
    ) -> ChatReply | None:
        """The cached answer of `chat(messages, schema)`, if any; never sends a request."""
        key = self.cache_key(messages, schema)
        entry = self.cache.get(key) if key is not None and self.cache is not None else None
        if entry is None:
            return None
        self.hooks.emit(CacheLookedUp(hit=True, batch=tally))
        return ChatReply.from_cache_entry(entry)

    def cache_reply(self, messages: Messages, schema: dict[str, Any] | None, reply: ChatReply) -> None:
        """Cache `reply` as the answer of `chat(messages, schema)` (e.g. one task's part of a packed answer)."""
        key = self.cache_key(messages, schema)
        if key is not None and self.cache is not None:
            self.cache.put(key, reply.cache_entry())

    def _model_for(self, call: _Call) -> str:
        """The pinned model while it is usable today, else the pool's pick."""
        if call.model is None:
            return self.pool.pick()
        if call.model not in self.pool.usable():
            raise quota_used_up(self.pool.ledger.clock, [call.model])
        return call.model

    def _mode_for(self, schema: dict[str, Any] | None) -> OutputMode:
        return self.mode if schema is not None else OutputMode.TEXT

    def _key_of(self, params: dict[str, Any], call: _Call | None = None) -> str:
        """The pool stands for the model unless the call pinned one; a numbered sample is its own entry."""
        model = call.model if call is not None and call.model else self.pool.cache_name
        sample = {"sample": call.sample} if call is not None and call.sample else {}
        return cache_key(self.settings.base_url, {**params, "model": model, **sample})

    def _chat(
        self, messages: Messages, schema: dict[str, Any] | None, accept: Callable[[ChatReply], bool] | None, call: _Call
    ) -> ChatReply:
        adaptations = switches = 0
        while True:
            mode = self._mode_for(schema)
            params = self._params(messages, mode, schema, model=self._model_for(call), temperature=call.temperature)
            key = self._key_of(params, call) if self.cache is not None else None
            if key is not None:
                assert self.cache is not None
                claimed = self.cache.claim(key, call.deadline)
                if isinstance(claimed, CachedAnswer):
                    self.hooks.emit(CacheLookedUp(hit=True, batch=call.batch))
                    return ChatReply.from_cache_entry(claimed)
                if claimed is False:  # another thread asked the same and got no answer worth keeping
                    if call.deadline is not None and time.monotonic() >= call.deadline:
                        raise deadline_reached()
                    continue  # look again, with what the client has learned meanwhile
                self.hooks.emit(CacheLookedUp(hit=False, batch=call.batch))
            try:
                reply = self._create(params, mode, call)
                if key is not None and self.cache is not None and worth_keeping(accept, reply):
                    self.cache.put(key, reply.cache_entry())
                return reply
            except Exception as exc:  # noqa: BLE001 - every failure becomes a user-facing message
                refused = switches < len(self.pool.models) and self.pool.refused(params["model"], exc, call.sent_day)
                if refused and call.model:  # a pinned model is not replaced by another
                    raise self._classify(exc) from None
                if refused:
                    switches += 1
                    continue  # that model is out for today: the next one, or the "quota used up" error
                if _too_long(exc):  # no output mode is the cure: the caller sends less (smaller packs)
                    raise self._classify(exc) from None
                if adaptations <= len(LADDER) + 2 and self._adapt(exc, mode, params):
                    adaptations += 1
                    continue
                raise self._classify(exc) from None
            finally:
                if key is not None and self.cache is not None:
                    self.cache.release(key)

    def _adapt(self, exc: BaseException, mode: OutputMode, params: dict[str, Any]) -> bool:
        """Drop the feature `exc` refused, if any; True when the call is worth repeating.

        Each lesson is learned once per client: workers run concurrently, and when another one
        already learned it, the call is simply repeated with what the client now knows.
        """
        message = server_message(exc).lower() if isinstance(exc, openai.APIStatusError) else ""
        for lesson in (self._without_thinking, self._fewer_logprobs, self._without_repeat_penalty):
            if (again := lesson(exc, message, params)) is not None:
                return again
        return self._lower_mode(exc, mode, params)

    def _without_thinking(self, exc: BaseException, _message: str, params: dict[str, Any]) -> bool | None:
        """Qwen3 "thinking" models refuse non-streamed calls unless told `enable_thinking: false`."""
        if not is_thinking_refusal(exc):
            return None
        if self._extra_body.get("enable_thinking") is not False:
            logger.info("模型要求关闭思考模式，改为发送 enable_thinking=false (sending enable_thinking=false)")
            self._extra_body = {**self._extra_body, "enable_thinking": False}
        return (params.get("extra_body") or {}).get("enable_thinking") is not False

    def _fewer_logprobs(self, exc: BaseException, message: str, params: dict[str, Any]) -> bool | None:
        """A 400 naming logprobs: fewer alternatives when it names how many, else none at all."""
        if not isinstance(exc, openai.BadRequestError) or "logprob" not in message or "logprobs" not in params:
            return None
        sent = params.get("top_logprobs", 0)
        if "top_logprobs" in message and sent > FEWER_TOP_LOGPROBS:  # refused how many, not logprobs as such
            if self.top_logprobs > FEWER_TOP_LOGPROBS:
                logger.info("端点不接受 top_logprobs=%d，改为 %d (endpoint refused top_logprobs=%d, sending %d)",
                            sent, FEWER_TOP_LOGPROBS, sent, FEWER_TOP_LOGPROBS)
                self.top_logprobs = FEWER_TOP_LOGPROBS
        elif self.logprobs:
            logger.info("端点不支持 logprobs，已关闭 (endpoint refused logprobs: disabled)")
            self.logprobs = False
        return True

    def _without_repeat_penalty(self, exc: BaseException, message: str, params: dict[str, Any]) -> bool | None:
        """Named in a 400/422 (OpenAI, strict validators) or a 500 (llama-cpp-python reports validation errors so)."""
        named = isinstance(exc, openai.APIStatusError) and exc.status_code in (400, 422, 500) and (
            "repeat_penalty" in message
        )
        if not named or "repeat_penalty" not in (params.get("extra_body") or {}):
            return None
        if self.repeat_penalty is not None:
            logger.info("端点不接受 repeat_penalty，已不再发送 (endpoint refused repeat_penalty: not sent)")
            self.repeat_penalty = None
        return True

    def _lower_mode(self, exc: BaseException, mode: OutputMode, params: dict[str, Any]) -> bool:
        """A refused or unreadable structured answer: one step down the output-mode ladder."""
        kind = self._classify(exc).kind
        if kind not in (ErrorKind.BAD_REQUEST, ErrorKind.BAD_RESPONSE) or "response_format" not in params:
            return False
        if mode != self.mode:
            return True
        lower = step_down(mode)
        if lower is None:
            return False
        logger.info("端点不接受输出模式 %s，改用 %s (endpoint refused %s, using %s)", mode, lower, mode, lower)
        self.mode = lower
        return True

    def _classify(self, exc: BaseException):  # noqa: ANN202
        s = self.settings
        return classify(exc, model=s.model, base_url=s.base_url, timeout=s.timeout)

    def _params(
        self, messages: Messages, mode: OutputMode, schema: dict[str, Any] | None, model: str,
        temperature: float | None = None,
    ) -> dict[str, Any]:
        """The request body: everything that decides the answer, hence also the cache key."""
        s = self.settings
        params: dict[str, Any] = {"model": model, "messages": messages,
                                  "temperature": s.temperature if temperature is None else temperature}
        if (fmt := response_format(mode, schema)) is not None:
            params["response_format"] = fmt
        if self.logprobs:
            params["logprobs"] = True
            # llama.cpp's servers return no logprobs at all without top_logprobs; the
            # alternatives of each token are what `scoring` weighs the chosen answer against.
            params["top_logprobs"] = self.top_logprobs
        if s.max_tokens:
            params["max_tokens"] = s.max_tokens
        if s.top_p is not None:
            params["top_p"] = s.top_p
        extra = dict(self._extra_body)
        if self.repeat_penalty is not None:
            extra["repeat_penalty"] = self.repeat_penalty
        if extra:
            params["extra_body"] = extra
        return params

    def _create(self, params: dict[str, Any], mode: OutputMode, call: _Call) -> ChatReply:
        started = time.monotonic()
        raw = self._send(params, call)
        completion = raw.parse()
        quota = _quota_remaining(raw.headers)
        if quota == 0:
            logger.warning("⚠️ ModelScope 配额即将用完：剩余 0 次 (quota remaining: 0)")
        usage = Usage()
        if getattr(completion, "usage", None) is not None:
            usage = Usage(completion.usage.prompt_tokens or 0, completion.usage.completion_tokens or 0)
        self._record_answer(params, raw, usage, time.monotonic() - started, call)
        self.hooks.emit(ReplyReceived(params["model"], usage.prompt_tokens, usage.completion_tokens, quota,
                                      time.monotonic() - started, call.batch))
        choices = getattr(completion, "choices", None)
        if not choices or choices[0].message is None:
            raise bad_response("no choices in reply")
        text = choices[0].message.content or ""
        if not text.strip():
            raise bad_response("empty content")
        return ChatReply(
            text=text, usage=usage, tokens=reply_tokens(choices[0]), quota_remaining=quota, mode=str(mode),
            model=params["model"], truncated=choices[0].finish_reason == "length",
        )

    def _record_answer(self, params: dict[str, Any], raw: Any, usage: Usage, seconds: float, call: _Call) -> None:
        """Tell the pool which model answered (ledger) and what the answer cost (dry-run calibration)."""
        model = params["model"]
        self.pool.answered(model, raw.headers, call.sent_day)
        chars = sum(len(str(m.get("content") or "")) for m in params.get("messages") or [])
        cost = Cost(1, chars, usage.prompt_tokens, usage.completion_tokens, seconds, call.tasks)
        self.pool.ledger.add_cost(model, cost)
        logger.debug("Answered by %s (%d+%d tokens, %.2f s)", model, usage.prompt_tokens,
                     usage.completion_tokens, seconds)

    def _send(self, params: dict[str, Any], call: _Call) -> Any:
        """One request through the limiter, repeated while the `RetryPolicy` says it is worth it.

        A request already sent when the deadline passes is let finish (its answer
        lands in the cache for the next retrieve); only new attempts are refused.
        """

        def before_retry(exc: BaseException, attempt: int, delay: float) -> None:
            self.hooks.emit(RetryScheduled(attempt, delay, call.batch))

        policy = RetryPolicy(self.settings.max_retries, call.deadline, before_retry)
        return policy.run(lambda: self._attempt(params, call))

    def _attempt(self, params: dict[str, Any], call: _Call) -> Any:
        """One request, with a slot of the limiter, which learns from how it went."""
        assert self._client is not None
        if not self.limiter.acquire(call.deadline):
            raise deadline_reached()
        started = time.monotonic()
        call.sent_day = self.pool.ledger.clock.day()
        self.hooks.emit(RequestSent(call.batch))
        try:
            raw = self._client.chat.completions.with_raw_response.create(**params)
        except Exception as exc:
            failure = failure_of(exc)
            self.hooks.emit(RequestFailed(exc, failure, call.batch))
            throttled = failure is Failure.THROTTLE  # repeated, every worker waits as long as the server asked
            self.limiter.release(started, success=False, throttled=throttled,
                                 pause=asked_pause(exc) if throttled else None)
            raise
        self.limiter.release(started, success=True)
        return raw


def _quota_remaining(headers: Any) -> int | None:
    numbers = [n for h in QUOTA_HEADERS if (n := header_int(headers.get(h))) is not None]
    return min(numbers) if numbers else None


_CONTEXT_MARKERS = ("context window", "context length", "context_length_exceeded", "maximum context")


def _too_long(exc: BaseException) -> bool:
    """The request did not fit the model's context (llama.cpp, vLLM and OpenAI wordings)."""
    return isinstance(exc, openai.BadRequestError) and any(
        m in server_message(exc).lower() for m in _CONTEXT_MARKERS
    )


_SHARED_LOCK = threading.Lock()


def shared_client(settings: Settings) -> LLMClient:
    """One client (one connection pool, one limiter, one learned `enable_thinking`) per settings.

    Locked: the first batches of a fresh process arrive together, and `lru_cache`
    alone would let each build its own client, hence its own concurrency limit.
    """
    with _SHARED_LOCK:
        return _shared_client(settings)


@lru_cache(maxsize=8)
def _shared_client(settings: Settings) -> LLMClient:
    return LLMClient(settings, cache=open_cache(settings), ledger=open_ledger(settings))
