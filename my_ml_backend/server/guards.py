"""Checks that run before any view: credentials, body size, busy workers; and strict JSON reading.

They sit in a WSGI middleware, in front of Flask and of label-studio-ml's own hooks,
so an unauthenticated or oversized request is answered (401, 413) before a byte of
its body is read or logged, whatever the Flask/Werkzeug version: label-studio-ml 1.0.9
pins Flask 1.1.2, our install overrides it with 3.1 (see `overrides.txt`).

Written here rather than taken from a library: Werkzeug's `max_content_length` only
acts when Flask reads the body (after `before_request` hooks ran), and Flask-HTTPAuth
and friends check credentials inside Flask, after label-studio-ml's hooks.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge

from .auth import credentials_match
from .registry import BadRequest

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", ""}
MAX_ID = 2**63 - 1  # SQLite INTEGER
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # the only way a lone surrogate gets in
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_answer(start_response: Callable, status: str, detail: str, headers: list[tuple[str, str]] = ()) -> list:
    body = json.dumps({"status": int(status[:3]), "detail": detail}, ensure_ascii=False).encode("utf-8")
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close"), *headers],
    )
    return [body]


class RequestTooLarge(RequestEntityTooLarge):
    """A chunked body passed the limit while being read (Flask answers it as a 413)."""

    description = "请求体超过上限，请分批预测 (request body over the limit: MAX_REQUEST_MB; send fewer tasks)"


class _LimitedInput:
    """`wsgi.input` for bodies without Content-Length (chunked): stops at `limit` bytes."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream, self.left = stream, limit

    def _take(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise RequestTooLarge()
        return data

    def read(self, size: int = -1) -> bytes:
        # Never ask for more than one byte past the limit: an oversized body is not buffered.
        want = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        return self._take(self.stream.read(want))

    def readline(self, size: int = -1) -> bytes:
        want = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        return self._take(self.stream.readline(want))

    def __iter__(self) -> Iterable[bytes]:
        return iter(self.readline, b"")


class RequestGuard:
    """WSGI middleware: auth, then size, then a per-worker cap on running /predict requests.

    The cap keeps threads free: gunicorn's gthread worker serves every request of a
    worker from `--threads` threads, so predictions hanging on a slow LLM would
    otherwise leave `/health` (1 s in Label Studio) waiting in the queue.
    """

    def __init__(
        self,
        app: Callable,
        *,
        max_bytes: int,
        basic_auth: tuple[str, str] | None = None,
        predict_slots: int | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.auth = (basic_auth[0].encode(), basic_auth[1].encode()) if basic_auth else None
        self.predict_slots = predict_slots
        self._slots = threading.BoundedSemaphore(predict_slots) if predict_slots else None
        self._warned_remote = False

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = (environ.get("PATH_INFO") or "/").rstrip("/") or "/"
        if not self._authorized(environ, path):
            return _json_answer(
                start_response, "401 UNAUTHORIZED", "需要认证 (authentication required)",
                [("WWW-Authenticate", 'Basic realm="ml-backend"')],
            )
        too_large = self._check_size(environ)
        if too_large:
            logger.warning("%s %s: %s", environ.get("REQUEST_METHOD"), path, too_large)
            return _json_answer(start_response, "413 REQUEST ENTITY TOO LARGE", too_large)
        if path == "/predict" and self._slots is not None:
            if not self._slots.acquire(blocking=False):
                logger.warning("/predict 被拒：本进程已有 %d 个预测在运行 (busy)", self.predict_slots)
                detail = (
                    f"后端繁忙：本进程已有 {self.predict_slots} 个预测请求在运行，请稍后重试或增大 THREADS/WORKERS "
                    f"(backend busy: {self.predict_slots} predictions running in this worker; retry shortly)"
                )
                return _json_answer(start_response, "503 SERVICE UNAVAILABLE", detail, [("Retry-After", "5")])
            try:
                return self._serve(environ, start_response, path)
            finally:
                self._slots.release()
        return self._serve(environ, start_response, path)

    def _serve(self, environ: dict[str, Any], start_response: Callable, path: str) -> Iterable[bytes]:
        """Call the app; log one line per request in debug mode (never headers or body)."""
        started = time.monotonic()
        status: list[str] = []

        def recording_start_response(code: str, headers: list, exc_info: Any = None) -> Any:
            status.append(code)
            return start_response(code, headers, exc_info) if exc_info else start_response(code, headers)

        try:
            # Responses here are built in full by the view (JSON), so the work is done on return.
            return self.app(environ, recording_start_response)
        finally:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s -> %s, %s bytes in, %.0f ms",
                    environ.get("REQUEST_METHOD"), path, (status or ["?"])[0],
                    environ.get("CONTENT_LENGTH") or "?", (time.monotonic() - started) * 1000,
                )

    def _authorized(self, environ: dict[str, Any], path: str) -> bool:
        if self.auth is None:
            self._warn_if_remote(environ)
            return True
        header = environ.get("HTTP_AUTHORIZATION")
        if credentials_match(header, self.auth):
            return True
        if path == "/webhook" and header is None:
            # Rejected on purpose (events may feed learning), but say how to let them in.
            logger.warning(
                "标注事件 webhook 未带认证：请在 Label Studio 的 Webhooks 设置中为它添加 Authorization 头 "
                "(annotation webhook without credentials: add an Authorization header to the project's webhook)"
            )
        return False

    def _warn_if_remote(self, environ: dict[str, Any]) -> None:
        if self._warned_remote or is_loopback(environ.get("REMOTE_ADDR") or ""):
            return
        self._warned_remote = True
        logger.warning(
            "⚠️ 收到来自 %s 的请求，但未启用认证：任何能访问此端口的人都能改提示词、写入示例、触发重新同步。"
            "请设置 BASIC_AUTH_USER/BASIC_AUTH_PASS (request from a non-loopback address without auth: "
            "set BASIC_AUTH_USER/BASIC_AUTH_PASS, see README 'Exposure and security')",
            environ.get("REMOTE_ADDR"),
        )

    def _check_size(self, environ: dict[str, Any]) -> str | None:
        raw = environ.get("CONTENT_LENGTH") or ""
        if raw.strip():
            try:
                length = int(raw)
            except ValueError:
                return "Content-Length 无效 (invalid Content-Length)"
            if length > self.max_bytes:
                return (
                    f"请求体 {length} 字节超过上限 {self.max_bytes} (request body over the limit: MAX_REQUEST_MB); "
                    "请分批预测 (send fewer tasks per request)"
                )
        elif "chunked" in (environ.get("HTTP_TRANSFER_ENCODING") or "").lower():
            environ["wsgi.input"] = _LimitedInput(environ["wsgi.input"], self.max_bytes)
        return None


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host in LOOPBACK_NAMES or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_options(argv: list[str] | None = None, env: dict[str, str] | None = None) -> tuple[list[str], int | None]:
    """(hosts to bind, gunicorn threads) from this process's command line, as far as it tells.

    gunicorn: `--bind/-b` (also in GUNICORN_CMD_ARGS; default 127.0.0.1, or 0.0.0.0 when
    PORT is set) and `--threads`. `_wsgi.py` run as a script: `--host` (default HOST or
    0.0.0.0). A bind from a gunicorn config file is not seen.
    """
    argv = list(sys.argv if argv is None else argv)
    env = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-b", "--bind", action="append", default=[])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--host")
    if argv and "gunicorn" in argv[0]:  # the gunicorn script, or .../gunicorn/__main__.py (python -m gunicorn)
        args, _ = parser.parse_known_args(shlex.split(env.get("GUNICORN_CMD_ARGS", "")) + argv[1:])
        binds = args.bind or [f"0.0.0.0:{env['PORT']}" if env.get("PORT") else "127.0.0.1:8000"]
        hosts = [b.rsplit(":", 1)[0] if not b.startswith("unix:") and ":" in b else b for b in binds]
        return hosts, args.threads or 1
    args, _ = parser.parse_known_args(argv[1:])
    return [args.host or env.get("HOST", "0.0.0.0")], None


def warn_if_exposed(hosts: list[str], auth_on: bool) -> bool:
    """Log a loud warning when listening beyond loopback without auth; True when it did."""
    exposed = [h for h in hosts if not is_loopback(h)]
    if auth_on or not exposed:
        return False
    logger.warning(
        "⚠️⚠️ 安全警告：后端监听 %s 且未启用认证，任何能访问此端口的人都能改项目提示词、写入少样本示例、"
        "用 LABEL_STUDIO_API_KEY 触发重新同步。请设置 BASIC_AUTH_USER/BASIC_AUTH_PASS，或只监听 127.0.0.1 "
        "(SECURITY WARNING: listening on %s without authentication; set BASIC_AUTH_USER/BASIC_AUTH_PASS "
        "or bind 127.0.0.1, see README 'Exposure and security')",
        ", ".join(exposed), ", ".join(exposed),
    )
    return True


def parse_json(raw: bytes) -> Any:
    """The request body as JSON, or `BadRequest`: never a RecursionError or a lone surrogate downstream.

    Lone surrogates (`"\\ud800"`) cannot be written to a UTF-8 log or hashed; in task
    data they become U+FFFD (one odd character must not fail a batch), in the project
    id or the labeling config they are refused.
    """
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadRequest("JSON 嵌套过深 (JSON nested too deeply)") from None
    except ValueError:
        raise BadRequest("请求体不是有效的 JSON (request body is not valid JSON)") from None
    if not isinstance(data, dict):
        raise BadRequest("请求体必须是 JSON 对象 (request body must be a JSON object)")
    if _SURROGATE_ESCAPE.search(raw):
        for key in ("project", "schema", "label_config"):
            if _has_surrogate(data.get(key)):
                raise BadRequest(f"'{key}' 含无效的 Unicode（孤立代理项）('{key}' holds a lone surrogate)")
        try:
            data = _replace_surrogates(data)
        except RecursionError:
            raise BadRequest("JSON 嵌套过深 (JSON nested too deeply)") from None
    return data


def _has_surrogate(value: Any) -> bool:
    return _SURROGATE.search(json.dumps(value, ensure_ascii=False)) is not None if value is not None else False


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def positive_id(value: Any, what: str) -> int:
    """A Label Studio id: a positive integer that fits SQLite, else `BadRequest`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise BadRequest(f"{what} 必须是正整数 ({what} must be a positive integer), got {str(value)[:40]!r}")
    return value


def _object_with_ids(data: dict[str, Any], key: str, ids: tuple[str, ...]) -> dict[str, Any] | None:
    """`data[key]` when present: an object whose `ids` fields, where given, are positive ids."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"{key} 必须是对象 ({key} must be an object)")
    for field_name in ids:
        if value.get(field_name) is not None:
            positive_id(value[field_name], f"{key}.{field_name}")
    return value


def check_webhook(data: dict[str, Any]) -> None:
    """Refuse, with a reason, an event whose ids or objects the example store could not take."""
    project = data.get("project")
    if isinstance(project, dict) and project.get("id") is not None:
        positive_id(project["id"], "project.id")
    annotation = _object_with_ids(data, "annotation", ("id", "task"))
    if annotation is not None and annotation.get("result") is not None and not isinstance(annotation["result"], list):
        raise BadRequest("annotation.result 必须是列表 (annotation.result must be a list)")
    task = _object_with_ids(data, "task", ("id",))
    annotations = data.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise BadRequest("annotations 必须是对象列表 (annotations must be a list of objects)")
        for item in annotations:
            if item.get("id") is not None:
                positive_id(item["id"], "annotations[].id")
    if isinstance(annotation, dict) and annotation.get("result") and not annotation.get("was_cancelled"):
        if (task or {}).get("id") is None and annotation.get("task") is None:
            raise BadRequest("事件缺少任务 id (event has neither task.id nor annotation.task)")
