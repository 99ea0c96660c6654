"""A real, scriptable HTTP server standing in for an OpenAI-compatible chat API.

Why a real server instead of mocking the client: the ML backend talks to
ModelScope API-Inference through the ``openai`` SDK (httpx underneath).  Mocking
at the Python level would skip exactly the layers whose behaviour we need to
pin down in tests -- HTTP status to exception mapping, response headers such as
``Retry-After``, read timeouts, dropped connections, SSE parsing and malformed
bodies.  This module therefore listens on a real socket on 127.0.0.1 and lets
tests script replies, latency and faults.

Typical use::

    with FakeLLMServer() as srv:
        srv.enqueue(chat('{"label": "positive"}'), throttled(retry_after=1))
        client = OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)
        ...
        assert srv.chat_calls == 2

Standalone (benchmarks, manual trials)::

    python -m tests.fake_llm.server --port 8001 --latency 0.5 --reply TEXT
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

DEFAULT_MODEL = "Qwen/Qwen3-Coder-480B-A35B-Instruct"
"""Model id reported by ``GET /models`` and used when a request names none."""

DEFAULT_CONTENT = '{"echo": true}'
"""Assistant content of the built-in default reply (valid JSON on purpose,
so code that parses the model output as JSON works without any scripting)."""

_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
"""Errors raised when the client went away (e.g. after its own timeout); they
are expected in fault tests and must never take the server down."""


@dataclass
class Reply:
    """One scripted answer to a chat completion request.

    A 200 reply without ``body`` is rendered as a standard OpenAI
    ``chat.completion`` (or as SSE chunks when the request asked for
    ``stream: true``); ``content=None`` then yields ``"content": null``.
    A non-200 reply without ``body`` gets a generic JSON error body.
    """

    status: int = 200
    content: str | None = None
    body: dict | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    usage: dict | None = None
    logprobs: list[tuple] | None = None  # (token, logprob[, top alternatives]) spelling the content
    finish_reason: str = "stop"  # "length": the reply was cut at max_tokens


# --------------------------------------------------------------------------
# Reply helpers.  Texts are the real ModelScope API-Inference messages so that
# error-classification code is tested against what production actually sends.
# --------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def chat(content: str, **kw: Any) -> Reply:
    """Return a successful chat completion whose assistant message is ``content``."""
    return Reply(status=200, content=content, **kw)


def error(
    status: int,
    message: str,
    *,
    key: str = "error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Return an error reply shaped like ModelScope's.

    ``key`` may be ``"errors"`` because ModelScope is inconsistent about the
    top-level key, and parsers must cope with both.
    """
    err_type = _ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "api_error"
    )
    return Reply(
        status=status,
        body={key: {"message": message, "type": err_type, "code": code}},
        headers=dict(headers or {}),
    )


def auth_failed() -> Reply:
    """401 as sent for a missing or invalid ModelScope token."""
    return error(
        401,
        "Authentication failed, please make sure that a valid ModelScope token"
        " is supplied.",
    )


def bind_aliyun() -> Reply:
    """403 as sent when the ModelScope account has no Alibaba Cloud account bound."""
    return error(403, "Please bind your Alibaba Cloud account before use.")


def model_unavailable(model: str) -> Reply:
    """400 as sent when no inference provider serves ``model``."""
    return error(400, f"Model id : {model} , has no provider supported")


def quota_exhausted() -> Reply:
    """429 for the exhausted daily quota (not retryable, unlike :func:`throttled`)."""
    return error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        headers={"modelscope-ratelimit-requests-remaining": "0"},
    )


def throttled(retry_after: float | None = None) -> Reply:
    """429 for short-term rate limiting, optionally with a ``Retry-After`` header."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = _format_number(retry_after)
    return error(429, "Request limit exceeded.", headers=headers)


def server_error(status: int = 500) -> Reply:
    """5xx reply, for testing retry/backoff paths."""
    return error(status, "Internal server error")


def null_choices(model: str = DEFAULT_MODEL) -> Reply:
    """200 whose ``choices`` is null -- ModelScope does this under some failures."""
    return Reply(
        status=200,
        body={
            "id": _new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": None,
        },
    )


def thinking_not_supported() -> Reply:
    """400 sent by Qwen3 thinking models when called without streaming."""
    return error(400, "enable thinking can not be support when stream=False")


def timeout(seconds: float) -> Reply:
    """Return a normal reply delayed by ``seconds`` (> client timeout to time out)."""
    return Reply(status=200, content=DEFAULT_CONTENT, delay=seconds)


def malformed() -> Reply:
    """200 whose body is not valid JSON, for testing response-parsing failures."""
    return Reply(status=200, body="{not json")


def _format_number(value: float) -> str:
    """Render ``1.0`` as ``"1"`` so integral Retry-After values look like real ones."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _new_id() -> str:
    """Return a chat completion id in OpenAI's ``chatcmpl-...`` style."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _text_len(content: Any) -> int:
    """Length of a message's text, including multimodal ``[{"type": "text"}]`` parts."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


def _estimate_usage(request_body: Any, content: str | None) -> dict[str, int]:
    """Estimate tokens as chars // 4 so accounting code sees plausible numbers."""
    messages = request_body.get("messages") if isinstance(request_body, dict) else None
    prompt_chars = 0
    if isinstance(messages, list):
        prompt_chars = sum(
            _text_len(m.get("content")) for m in messages if isinstance(m, dict)
        )
    prompt_tokens = prompt_chars // 4
    completion_tokens = len(content or "") // 4
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _logprob_entries(pairs: list[tuple]) -> list[dict[str, Any]]:
    """Convert ``(token, logprob[, [(alternative, logprob), ...]])`` to OpenAI's ``logprobs.content`` items."""
    return [
        {
            "token": p[0], "logprob": p[1], "bytes": None,
            "top_logprobs": [{"token": a, "logprob": alp, "bytes": None} for a, alp in (p[2] if len(p) > 2 else ())],
        }
        for p in pairs
    ]


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server that stays quiet about clients that hang up.

    Fault tests deliberately make clients time out or disconnect; the default
    ``handle_error`` would print a traceback for each, drowning test output.
    """

    daemon_threads = True
    allow_reuse_address = True
    owner: FakeLLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore disconnects; report anything else, since it is a bug in this fake."""
        exc = sys.exc_info()[1]
        if isinstance(exc, _CONNECTION_ERRORS) or self.owner._stopping.is_set():
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Request handler; all state lives on the owning :class:`FakeLLMServer`."""

    # HTTP/1.1 keeps connections alive like a real API does, so the httpx
    # connection pool is exercised (Content-Length is always sent for that).
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle
    # plus delayed ACKs would add ~40 ms to every reply and skew benchmarks.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, fmt: str, *args: Any) -> None:
        """Silence per-request stderr logging; tests inspect ``requests`` instead."""

    # -- request plumbing -------------------------------------------------

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Consume optional trailers up to the blank line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _record(self, method: str) -> dict[str, Any]:
        """Read, parse and store the request so tests can assert on what was sent."""
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        entry = {
            "method": method,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "time": time.time(),
        }
        self.server.owner._add_request(entry)
        return entry

    def _route(self) -> str:
        """Path without query string, with any trailing slash removed."""
        return self.path.split("?", 1)[0].rstrip("/")

    # -- response plumbing ------------------------------------------------

    def _send(
        self, status: int, payload: dict | str, headers: dict[str, str] | None = None
    ) -> None:
        """Send a complete (non-streamed) response with Content-Length."""
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode(
            "utf-8"
        )
        extra = headers or {}
        self.send_response(status)
        # A scripted Content-Type wins, e.g. to test a text/html gateway page.
        if not any(name.lower() == "content-type" for name in extra):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close the socket without any response, as a crashed proxy would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _not_found(self) -> None:
        """404 in the same JSON error shape as the real API."""
        self._send(
            404,
            {
                "error": {
                    "message": f"Not found: {self.path}",
                    "type": "not_found_error",
                    "code": None,
                }
            },
        )

    # -- verbs ------------------------------------------------------------

    def do_GET(self) -> None:
        """Serve ``/models`` (clients sometimes probe it); everything else is 404."""
        try:
            self._record("GET")
            if self._route().endswith("/models"):
                quota = self.server.owner.quota
                served = quota.served_models() if quota is not None else [DEFAULT_MODEL]
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": m, "object": "model"} for m in served],
                    },
                )
            else:
                self._not_found()
        except _CONNECTION_ERRORS:
            self.close_connection = True

    def do_POST(self) -> None:
        """Answer chat completions from the script; everything else is 404."""
        try:
            entry = self._record("POST")
            if not self._route().endswith("/chat/completions"):
                self._not_found()
                return
            owner = self.server.owner
            owner._enter()
            try:
                quota = owner.quota
                if quota is not None:
                    refusal, quota_headers = quota.admit(entry["body"])
                    if refusal is not None:
                        self._answer(refusal, entry["body"])
                        return
                    reply = owner._next_reply(entry["body"])
                    reply = dataclasses.replace(reply, headers={**quota_headers, **reply.headers})
                else:
                    reply = owner._next_reply(entry["body"])
                wait = max(0.0, float(owner.latency) + float(reply.delay))
                # Event.wait instead of time.sleep so stop() does not hang on long delays.
                if wait and owner._stopping.wait(wait):
                    self._drop()
                    return
                if reply.drop:
                    self._drop()
                    return
                self._answer(reply, entry["body"])
            finally:
                owner._leave()
        except _CONNECTION_ERRORS:
            self.close_connection = True

    def _answer(self, reply: Reply, request_body: Any) -> None:
        """Render ``reply`` as JSON, SSE or a raw body override."""
        if reply.body is not None:
            self._send(reply.status, reply.body, reply.headers)
            return
        if reply.status != 200:
            phrase = _status_phrase(reply.status)
            err_type = _ERROR_TYPES.get(
                reply.status, "server_error" if reply.status >= 500 else "api_error"
            )
            self._send(
                reply.status,
                {"error": {"message": phrase, "type": err_type, "code": None}},
                reply.headers,
            )
            return
        model = DEFAULT_MODEL
        if isinstance(request_body, dict) and isinstance(
            request_body.get("model"), str
        ):
            model = request_body["model"]
        usage = (
            reply.usage
            if reply.usage is not None
            else _estimate_usage(request_body, reply.content)
        )
        if isinstance(request_body, dict) and request_body.get("stream") is True:
            self._stream(reply, model, usage)
            return
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": reply.content},
            "finish_reason": reply.finish_reason,
        }
        if reply.logprobs is not None:
            choice["logprobs"] = {"content": _logprob_entries(reply.logprobs)}
        self._send(
            200,
            {
                "id": _new_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
            reply.headers,
        )

    def _stream(self, reply: Reply, model: str, usage: dict) -> None:
        """Send the reply as Server-Sent Events, as the API does for ``stream: true``.

        The connection is closed afterwards because there is no Content-Length;
        that keeps the framing simple without chunked transfer encoding.
        """
        completion_id = _new_id()
        created = int(time.time())
        content = reply.content or ""

        def chunk(delta: dict, finish: str | None = None, logprobs: Any = None) -> dict:
            """Build one ``chat.completion.chunk`` object."""
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "finish_reason": finish,
            }
            if logprobs is not None:
                choice["logprobs"] = {"content": logprobs}
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }

        events: list[dict] = [chunk({"role": "assistant", "content": ""})]
        if (
            reply.logprobs is not None
            and "".join(t[0] for t in reply.logprobs) == content
        ):
            # Tokens spell the content: one chunk per token, each with its logprob.
            events += [
                chunk({"content": t[0]}, logprobs=_logprob_entries([t]))
                for t in reply.logprobs
            ]
        else:
            piece = 8
            events += [
                chunk({"content": content[i : i + piece]})
                for i in range(0, len(content), piece)
            ]
        final = chunk({}, finish="stop")
        final["usage"] = usage
        events.append(final)

        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


def _status_phrase(status: int) -> str:
    """Return the standard reason phrase, or a generic text for non-standard codes."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


ACCOUNT_LIMIT_HEADER = "modelscope-ratelimit-requests-limit"
ACCOUNT_REMAINING_HEADER = "modelscope-ratelimit-requests-remaining"
MODEL_LIMIT_HEADER = "modelscope-ratelimit-model-requests-limit"
MODEL_REMAINING_HEADER = "modelscope-ratelimit-model-requests-remaining"


class ModelScopeQuota:
    """ModelScope API-Inference's free tier as publicly reported (2025-2026).

    - a daily cap per account (about 2,000 calls) and per model (100-500);
    - every answer, refusals included, carries the four ``modelscope-ratelimit-*``
      headers for the account and the model asked;
    - over a cap: 429 with an ``errors`` body (not ``error``);
    - a retired model: 404, or 400 "Model id : X , has no provider supported";
      it counts against nothing and is absent from ``GET /models``.

    Every request that reaches a served model under its caps counts, whatever the
    scripted reply then is (a 5xx too): the real service counts calls, not answers.
    """

    def __init__(
        self, account_limit: int, model_limits: dict[str, int], retired: dict[str, int], default_model_limit: int
    ) -> None:
        self.account_limit = account_limit
        self.model_limits = model_limits
        self.retired = retired
        self.default_model_limit = default_model_limit
        self._lock = threading.Lock()
        self.account_used = 0
        self.used: dict[str, int] = {}  # calls counted per model today
        self.refused: dict[str, int] = {}  # refusals sent per model (quota or retired), all days

    def limit_of(self, model: str) -> int:
        return self.model_limits.get(model, self.default_model_limit)

    def served_models(self) -> list[str]:
        """What ``GET /models`` lists: every model with a cap, the default one, never a retired one."""
        known = dict.fromkeys([DEFAULT_MODEL, *self.model_limits])
        return [m for m in known if m not in self.retired]

    def new_day(self) -> None:
        """The quota day rolls over: every cap is full again."""
        with self._lock:
            self.account_used = 0
            self.used.clear()

    def admit(self, body: Any) -> tuple[Reply | None, dict[str, str]]:
        """Count one request; return (refusal or None, the quota headers to send)."""
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) and model else DEFAULT_MODEL
        with self._lock:
            if model in self.retired:
                self.refused[model] = self.refused.get(model, 0) + 1
                status = self.retired[model]
                headers = {
                    ACCOUNT_LIMIT_HEADER: str(self.account_limit),
                    ACCOUNT_REMAINING_HEADER: str(max(0, self.account_limit - self.account_used)),
                }
                text = (
                    f"Model {model} not found"
                    if status == 404
                    else f"Model id : {model} , has no provider supported"
                )
                return error(status, text, key="errors", headers=headers), headers
            used = self.used.get(model, 0)
            limit = self.limit_of(model)
            if self.account_used >= self.account_limit or used >= limit:
                self.refused[model] = self.refused.get(model, 0) + 1
                which = "account" if self.account_used >= self.account_limit else f"model {model}"
                headers = self._headers(model)
                refusal = error(
                    429,
                    f"Request limit exceeded: you have used up today's quota for {which}, please try tomorrow.",
                    key="errors",
                    code="RateLimitExceeded",
                    headers=headers,
                )
                return refusal, headers
            self.account_used += 1
            self.used[model] = used + 1
            return None, self._headers(model)

    def _headers(self, model: str) -> dict[str, str]:
        limit = self.limit_of(model)
        return {
            ACCOUNT_LIMIT_HEADER: str(self.account_limit),
            ACCOUNT_REMAINING_HEADER: str(max(0, self.account_limit - self.account_used)),
            MODEL_LIMIT_HEADER: str(limit),
            MODEL_REMAINING_HEADER: str(max(0, limit - self.used.get(model, 0))),
        }


class FakeLLMServer:
    """OpenAI-compatible chat endpoint on a real local socket, scriptable by tests.

    Reply precedence for each ``POST .../chat/completions``: the FIFO queue
    (:meth:`enqueue`), then the responder (:meth:`set_responder`), then the
    default (:meth:`set_default`), then the built-in echo reply.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind now so :attr:`base_url` (and an OS-chosen port) is known at once."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queue: deque[Reply] = deque()
        self._default: Reply | None = None
        self._responder: Callable[[dict], Reply] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.requests: list[dict] = []
        self.latency: float = 0.0
        self.quota: ModelScopeQuota | None = None  # see :meth:`modelscope`
        self.in_flight = 0  # chat requests being answered now
        self.max_in_flight = 0  # the most ever answered at once since the last reset
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.owner = self

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        """Serve in a daemon thread so a hung test never blocks interpreter exit."""
        if self._stopped:
            raise RuntimeError(
                "FakeLLMServer cannot be restarted after stop(); create a new one"
            )
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"FakeLLMServer:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake handlers sleeping on delays, free the port. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> Self:
        """Start on entering a ``with`` block."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop on leaving a ``with`` block, even when the test failed."""
        self.stop()

    # -- addresses ----------------------------------------------------------

    @property
    def host(self) -> str:
        """Host the socket is bound to."""
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """Actual port (useful with ``port=0``)."""
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """Base URL to hand to ``OpenAI(base_url=...)``, ending in ``/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    # -- scripting ----------------------------------------------------------

    def reset(self) -> None:
        """Forget requests, queued replies, responder and default between test cases."""
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self._default = None
            self._responder = None
            self.max_in_flight = self.in_flight
            self.quota = None

    def modelscope(
        self,
        account_limit: int = 2000,
        model_limits: dict[str, int] | None = None,
        retired: dict[str, int] | None = None,
        default_model_limit: int = 500,
    ) -> ModelScopeQuota:
        """Behave like ModelScope API-Inference's free tier: daily caps, quota headers, retired models.

        ``model_limits``: daily cap per model (others get ``default_model_limit``);
        ``retired``: model -> status of its refusal (404, or 400 "has no provider").
        Returns the quota state, e.g. to read ``served`` counts or start a new day.
        """
        quota = ModelScopeQuota(account_limit, dict(model_limits or {}), dict(retired or {}), default_model_limit)
        with self._lock:
            self.quota = quota
        return quota

    def enqueue(self, *responses: Reply) -> None:
        """Append replies consumed one per chat request, in order."""
        with self._lock:
            self._queue.extend(responses)

    def set_default(self, reply: Reply | None) -> None:
        """Set the reply for an empty queue and no responder; None restores echo."""
        with self._lock:
            self._default = reply

    def set_responder(self, fn: Callable[[dict], Reply] | None) -> None:
        """Compute replies from the request body (e.g. echo back per-task data)."""
        with self._lock:
            self._responder = fn

    @property
    def chat_calls(self) -> int:
        """Count ``POST .../chat/completions`` received, e.g. to assert retry counts."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.get("method") == "POST"
                and str(r.get("path", ""))
                .split("?", 1)[0]
                .rstrip("/")
                .endswith("/chat/completions")
            )

    # -- used by the handler -----------------------------------------------

    def _add_request(self, entry: dict) -> None:
        """Record a request under the lock (handlers run concurrently)."""
        with self._lock:
            self.requests.append(entry)

    def _enter(self) -> None:
        """A chat request starts being answered (for `max_in_flight`)."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _next_reply(self, body: Any) -> Reply:
        """Pick the reply for one chat request by the documented precedence."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            responder = self._responder
            default = self._default
        if responder is not None:
            # Called outside the lock so a slow responder does not serialise requests.
            try:
                return responder(body if isinstance(body, dict) else {})
            except Exception as exc:  # noqa: BLE001 - surface the bug to the test as a 500
                return error(500, f"FakeLLMServer responder raised {exc!r}")
        if default is not None:
            return default
        return Reply(status=200, content=DEFAULT_CONTENT)


def main(argv: list[str] | None = None) -> None:
    """Run the fake standalone until Ctrl-C, for benchmarks and manual trials."""
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible chat API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds before every answer"
    )
    parser.add_argument(
        "--reply", default=None, help="assistant content for every chat request"
    )
    args = parser.parse_args(argv)

    server = FakeLLMServer(host=args.host, port=args.port)
    server.latency = args.latency
    if args.reply is not None:
        server.set_default(chat(args.reply))
    server.start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
