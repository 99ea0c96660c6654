"""Predict on import, wired into the app: `/setup` records the project's choice, `/webhook` queues TASKS_CREATED.

`/setup` of an opted-in project also makes sure, in the background (Label Studio gives
`/setup` 3 s), that the project's webhook sends TASKS_CREATED here. A TASKS_CREATED body
is answered as soon as its ids are queued. Label Studio writes the action first, so
`ImportGate`, in front of the size guard, reads such a body as a stream whatever its size:
an import over `MAX_REQUEST_MB` is queued, not refused. Other bodies go on to the guard
and the stock views as before (a TASKS_CREATED written another way is read by the view).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.wsgi import get_input_stream

from ..onimport import tokens
from ..onimport.config import ImportConfig, import_config, opted_in
from ..onimport.payload import ACTION, CreatedTasks, PayloadError, leading_action, read_created_tasks
from ..onimport.runner import IMPORT_QUEUED
from ..onimport.webhook_setup import backend_extra_params, backend_url, basic_auth_header, ensure_webhook
from ..onimport.worker import ImportWorker, open_queue
from ..settings import Settings
from ..telemetry.metrics import METRICS
from .auth import credentials_match
from .guards import parse_json
from .import_status import import_table, install_backlog_gauge

logger = logging.getLogger(__name__)

HEAD_BYTES = 128  # read before deciding: `{"action": "TASKS_CREATED"` fits with room to spare
ENSURE_EVERY = 600.0  # seconds before a project's webhook is checked again on its next /setup
# Label Studio saves a new ML backend, and its own all-actions webhook, just after /setup answers:
# looking later finds that webhook instead of racing it with a second one.
ENSURE_DELAY = 2.0
WARN_EVERY = 60.0  # seconds between two log lines about missing Label Studio settings


def _project_id(value: Any) -> int | None:
    """`7`, `"7.1700000000"` or `{"id": 7}` -> 7."""
    if isinstance(value, dict):
        value = value.get("id")
    text = str(value or "").split(".", 1)[0]
    return int(text) if text.isdecimal() and 0 < len(text) <= 18 else None


class ImportService:
    """The queue, the worker and the decisions of predict-on-import in this server process."""

    def __init__(self, config: ImportConfig) -> None:
        self.config = config
        self.queue = open_queue(config)
        self.worker = ImportWorker(self.queue, config)
        self.status_table = import_table(self.queue, config)  # for the status page
        self._ensured: dict[int, float] = {}
        self._lock = threading.Lock()
        self._warned = 0.0
        if config.can_run:
            self.worker.start()
        elif config.for_all:
            logger.warning("PREDICT_ON_IMPORT=on: %s", config.missing_line)

    def wanted(self, project: int) -> bool | None:
        """Whether the project predicts on import; None when its extra params are not known here yet."""
        stored = self.queue.extra_params(project)
        if stored is None and not self.config.for_all:
            return None
        return opted_in(self.config, json.loads(stored) if stored else None)

    def _warn_missing(self) -> None:
        if time.monotonic() - self._warned > WARN_EVERY:
            self._warned = time.monotonic()
            logger.warning("%s", self.config.missing_line)

    def accept(self, created: CreatedTasks) -> tuple[dict[str, Any], int]:
        """Queue the created tasks of an opted-in project; the answer to the webhook."""
        if created.project is None:
            return {"status": 400, "detail": "TASKS_CREATED 缺少项目 id (no project id)"}, 400
        wanted = self.wanted(created.project)
        if wanted is None and self.config.can_run:  # no /setup seen since DATA_DIR was new: Label Studio knows
            threading.Thread(target=self._learn, args=(created,), name=f"import-learn-{created.project}",
                             daemon=True).start()
            return {"status": "checking", "action": ACTION, "project": created.project}, 200
        if not wanted:
            return {"status": "ignored", "action": ACTION, "detail": "predict_on_import off for this project"}, 200
        if not self.config.can_run:
            self._warn_missing()
            return {"status": "ignored", "action": ACTION, "detail": self.config.missing_line}, 200
        return self._queue(created)

    def _learn(self, created: CreatedTasks) -> None:
        """Read the project's extra params from Label Studio, keep them, and queue the tasks if it opted in."""
        assert created.project is not None
        key = self.config.label_studio_key or ""
        try:
            client = tokens.connect(self.config.label_studio_url or "", key)
            found, params = backend_extra_params(client, created.project, self.config.public_url)
        except Exception as exc:  # noqa: BLE001 - the log says why; the next /setup records the choice
            error = tokens.explain(exc, key)
            logger.warning("无法读取项目 %s 的 ML 后端设置 (cannot read the project's ML backend): %s: %s",
                           created.project, type(error).__name__, str(error)[:300])
            return
        if not found:
            logger.warning("项目 %s 的导入未处理：找不到本后端的连接，"
                           "请设置 BACKEND_PUBLIC_URL 或重新保存项目的模型设置 "
                           "(project %s: import not handled, no connection to this backend found)",
                           created.project, created.project)
            return
        self.queue.remember(created.project, json.dumps(params, ensure_ascii=False, sort_keys=True))
        if opted_in(self.config, params):
            self._queue(created)

    def _queue(self, created: CreatedTasks) -> tuple[dict[str, Any], int]:
        assert created.project is not None
        added = self.queue.add(created.project, created.task_ids)
        METRICS.inc(IMPORT_QUEUED, added)
        if created.dropped:
            logger.warning("TASKS_CREATED project %s: %d ids past the limit were not queued", created.project,
                           created.dropped)
        logger.info("导入即预测 (predict on import): project %s, %d new task(s) queued", created.project, added)
        self.worker.wake()
        return {"status": "queued", "action": ACTION, "project": created.project, "tasks": added}, 200

    def after_setup(self, data: dict[str, Any]) -> None:
        """Keep the project's extra params; for an opted-in project, check its webhook in the background."""
        project = _project_id(data.get("project"))
        if project is None:
            return
        params = data.get("extra_params")
        stored = json.dumps(params, ensure_ascii=False, sort_keys=True)
        if self.queue.extra_params(project) != stored:
            self.queue.remember(project, stored)
        if not opted_in(self.config, params):
            return
        if not self.config.can_run:
            self._warn_missing()
            return
        with self._lock:
            if time.monotonic() - self._ensured.get(project, -ENSURE_EVERY) < ENSURE_EVERY:
                return
            self._ensured[project] = time.monotonic()
        threading.Thread(target=self._ensure, args=(project,), name=f"import-webhook-{project}", daemon=True).start()

    def _ensure(self, project: int) -> None:
        key = self.config.label_studio_key or ""
        time.sleep(ENSURE_DELAY)
        try:
            client = tokens.connect(self.config.label_studio_url or "", key)
            url = backend_url(client, project, self.config.public_url)
            if url is None:
                logger.warning("项目 %s 连接了多个或零个 ML 后端，无法确定本后端的地址：请设置 BACKEND_PUBLIC_URL "
                               "(project %s: cannot tell this backend's URL; set BACKEND_PUBLIC_URL)", project, project)
                return
            auth = basic_auth_header(*self.config.basic_auth) if self.config.basic_auth else None
            logger.info("导入即预测 webhook (predict on import webhook), project %s: %s", project,
                        ensure_webhook(client, project, url, auth))
        except Exception as exc:  # noqa: BLE001 - retried on a later /setup; the log says why
            with self._lock:
                self._ensured.pop(project, None)
            error = tokens.explain(exc, key)
            logger.warning("无法设置项目 %s 的 TASKS_CREATED webhook (cannot set up the webhook): %s: %s", project,
                           type(error).__name__, str(error)[:300])


class _Replay:
    """A body stream whose first bytes were already read."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head, self._rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._rest.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


class ImportGate:
    """WSGI middleware: a TASKS_CREATED `/webhook` body in Label Studio's form is streamed, any size, here."""

    def __init__(self, app: Callable, service: ImportService) -> None:
        self.app, self.service = app, service
        auth = service.config.basic_auth
        self.auth = (auth[0].encode(), auth[1].encode()) if auth else None

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = (environ.get("PATH_INFO") or "").rstrip("/")
        if path != "/webhook" or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        stream = get_input_stream(environ)
        head = stream.read(HEAD_BYTES)
        if leading_action(head) != ACTION:
            environ["wsgi.input"] = _Replay(head, stream)
            return self.app(environ, start_response)
        if self.auth is not None and not credentials_match(environ.get("HTTP_AUTHORIZATION"), self.auth):
            return _answer(start_response, {"status": 401, "detail": "需要认证 (authentication required)"}, 401)
        try:
            body, status = self.service.accept(read_created_tasks(_Replay(head, stream)))
        except PayloadError as exc:
            body, status = {"status": 400, "detail": str(exc)}, 400
        return _answer(start_response, body, status)


def _answer(start_response: Callable, body: dict[str, Any], status: int) -> list[bytes]:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    reason = {200: "OK", 400: "BAD REQUEST", 401: "UNAUTHORIZED"}.get(status, "")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    if status == 401:
        headers.append(("WWW-Authenticate", 'Basic realm="ml-backend"'))
    start_response(f"{status} {reason}", headers)
    return [data]


def install_import(app: Flask, settings: Settings) -> ImportService:
    """Wrap `/setup` and `/webhook`, put `ImportGate` in front of the app; the service's `status_table` is the
    status page's section."""
    service = ImportService(import_config(settings))
    setup_view, webhook_view = app.view_functions["_setup"], app.view_functions["webhook"]

    def setup() -> Any:
        response = setup_view()
        if getattr(response, "status_code", 200) == 200:
            try:
                service.after_setup(parse_json(request.get_data(cache=True)))
            except Exception:  # noqa: BLE001 - /setup has answered; predict-on-import says why in the log
                logger.warning("导入即预测设置失败 (predict-on-import set-up failed)", exc_info=True)
        return response

    def webhook() -> Any:
        raw = request.get_data(cache=True)
        if ACTION.encode() not in raw:
            return webhook_view()
        try:
            created = read_created_tasks(io.BytesIO(raw))
        except PayloadError:
            return webhook_view()
        if created.action != ACTION:
            return webhook_view()
        body, status = service.accept(created)
        return jsonify(body), status

    app.view_functions["_setup"] = setup
    app.view_functions["webhook"] = webhook
    app.wsgi_app = ImportGate(app.wsgi_app, service)  # type: ignore[method-assign]
    install_backlog_gauge(service.queue)
    return service
