"""A ModelScope-shaped HTTP proxy in front of an OpenAI-compatible server (a test fixture).

ModelScope API-Inference is our users' default endpoint, and it differs from a local server in
what the backend relies on: it returns no token logprobs, answers a `json_schema` response
format with HTTP 200 and `"choices": null`, and honours `json_object` without a grammar (the
model writes what it likes). This proxy gives any OpenAI-compatible server (the local
llama.cpp model, the fake LLM) those three traits, so that a benchmark or a test sees the
default path on a real model:

- `logprobs` / `top_logprobs` are dropped from requests, `logprobs` from every reply choice;
- a `json_schema` response format is answered at once: 200, `"choices": null`, nothing forwarded;
- a `json_object` response format (with or without an embedded `schema`) is removed before
  forwarding, so no grammar constrains the answer;
- everything else (other paths, status codes, error bodies, headers such as Retry-After) is
  forwarded as it is.

Typical use::

    with ModelScopeAdapter(upstream.base_url) as adapter:
        client = OpenAI(base_url=adapter.base_url, api_key="sk-local")
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

# Loopback needs no proxy, whatever http_proxy says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}


def shape_request(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The request as ModelScope would honour it, or None when it answers without the model; and why."""
    shaped = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
    fmt = shaped.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        return None, "json_schema"
    if kind == "json_object":
        del shaped["response_format"]
        return shaped, "json_object"
    return shaped, "plain"


def shape_reply(payload: Any) -> Any:
    """A chat completion without token logprobs."""
    if isinstance(payload, dict) and isinstance(payload.get("choices"), list):
        for choice in payload["choices"]:
            if isinstance(choice, dict):
                choice.pop("logprobs", None)
    return payload


def null_choices(model: str) -> dict[str, Any]:
    """ModelScope's answer to a `json_schema` response format: 200 with no choices."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": None}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: ModelScopeAdapter


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, fmt: str, *args: Any) -> None:
        """Quiet: `ModelScopeAdapter.seen` counts what passed."""

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        sent = {k.lower(): v for k, v in (headers or {}).items() if k.lower() not in _HOP_BY_HOP}
        sent.setdefault("content-type", "application/json")
        for name, value in sent.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _forward(self, method: str, body: bytes | None) -> tuple[int, bytes, dict[str, str]]:
        url = self.server.owner.upstream + self.path[len("/v1"):] if self.path.startswith("/v1") else (
            self.server.owner.upstream + self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host", "accept-encoding"}}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with _DIRECT.open(request, timeout=self.server.owner.timeout) as resp:
                return resp.status, resp.read(), dict(resp.headers.items())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers.items())
        except (urllib.error.URLError, OSError) as exc:  # upstream down or too slow: a gateway's answer
            body = {"error": {"message": f"upstream unreachable: {exc}", "type": "server_error", "code": None}}
            return 502, json.dumps(body).encode(), {}

    def do_GET(self) -> None:
        status, data, headers = self._forward("GET", None)
        self._send(status, data, headers)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not self.path.rstrip("/").endswith("/chat/completions") or not isinstance(body, dict):
            status, data, headers = self._forward("POST", raw)
            self._send(status, data, headers)
            return
        shaped, kind = shape_request(body)
        self.server.owner.count(kind)
        if shaped is None:
            self._send(200, json.dumps(null_choices(str(body.get("model", "")))).encode())
            return
        status, data, headers = self._forward("POST", json.dumps(shaped).encode())
        if status == 200 and not shaped.get("stream"):
            with contextlib.suppress(ValueError):
                data = json.dumps(shape_reply(json.loads(data))).encode()
        self._send(status, data, headers)


class ModelScopeAdapter:
    """The proxy on a real loopback socket, serving in a daemon thread; a context manager."""

    def __init__(self, upstream_base_url: str, host: str = "127.0.0.1", port: int = 0, timeout: float = 600) -> None:
        self.upstream = upstream_base_url.rstrip("/")
        self.timeout = timeout
        self.seen: Counter[str] = Counter()  # chat requests by response format: json_schema / json_object / plain
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, kind: str) -> None:
        with self._lock:
            self.seen[kind] += 1

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="ModelScopeAdapter", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
