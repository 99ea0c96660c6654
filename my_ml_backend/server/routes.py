"""Server glue: the HTTP views Label Studio calls, installed on the stock label-studio-ml app.

The stock app keeps one "current model" for the whole server and reports the wrapper's version
from `/setup`: Label Studio then duplicates predictions on every retrieve and a second project is
answered with the first one's config. So `/setup`, `/predict`, `/webhook` and the other stock
routes are re-pointed (through Flask's `view_functions`, the app stays the stock one) to views that:
- pick the model for the config each request carries (an LRU of models per config),
- report the model's own `model_version` everywhere,
- answer malformed requests with a 400 and a message instead of a 500 traceback,
- run `fit()` in-process for webhooks (no forked process, no job folder in the source tree).
`/metrics` (stock: an empty JSON) serves our counters in Prometheus text format.

The stock request/response debug hooks, which log every header and body, are removed;
`guards.RequestGuard` checks auth, size and busy workers before Flask; `/health`, `/versions`
and `/is_training` show no paths or tracebacks; any unexpected error is a JSON 500 without internals.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..settings import Settings
from ..telemetry.metrics import CONTENT_TYPE, METRICS
from .guards import RequestGuard, check_webhook, parse_json, server_options
from .import_webhook import install_import
from .registry import BadRequest, ModelRegistry
from .status import install_status_page

MAX_PROJECT_CHARS = 100

logger = logging.getLogger(__name__)


def _json_body() -> dict[str, Any]:
    return parse_json(request.get_data(cache=True))


def _project_key(data: dict[str, Any]) -> str:
    project = data.get("project")
    if isinstance(project, dict):  # webhooks carry the whole project
        project = project.get("id")
    key = str(project or "").split(".", 1)[0]  # Label Studio sends "<id>.<created_at timestamp>"
    if len(key) > MAX_PROJECT_CHARS or not key.isprintable():
        raise BadRequest("project 无效 (invalid 'project': expected '<id>.<timestamp>')")
    return key


def _drop_stock_logging(app: Flask) -> None:
    """Remove label-studio-ml's debug hooks: they log every header (credentials) and body (tokens)."""
    for hooks in (app.before_request_funcs, app.after_request_funcs):
        for name, funcs in hooks.items():
            hooks[name] = [f for f in funcs if f.__name__ not in ("log_request_info", "log_response_info")]


def install(
    app: Flask, model_class: type, basic_auth: tuple[str, str] | None, settings: Settings
) -> ModelRegistry:
    """Point the stock app's `/setup`, `/predict`, `/webhook` and `/metrics` at our views (with the process's
    settings: `model_class` is set up with the same ones, by `_wsgi.py`)."""
    registry = ModelRegistry(
        model_class, max_chars=settings.model_cache_chars, max_config_chars=settings.max_config_chars
    )
    # JSON bodies in readable UTF-8 ("API Key未设置"), not "\\u672a…"; Label Studio reads both.
    app.config["JSON_AS_ASCII"] = False  # Flask < 2.3
    if hasattr(getattr(app, "json", None), "ensure_ascii"):
        app.json.ensure_ascii = False  # Flask >= 2.3
    _drop_stock_logging(app)
    _hosts, threads = server_options()
    slots = settings.predict_slots or (max(1, threads - 1) if threads else None)
    app.wsgi_app = RequestGuard(
        app.wsgi_app, max_bytes=settings.max_request_bytes, basic_auth=basic_auth, predict_slots=slots
    )

    def setup() -> Any:
        data = _json_body()
        schema = data.get("schema") or data.get("label_config")
        if not isinstance(schema, str) or not schema.strip():
            raise BadRequest("缺少 schema（标注配置）(missing 'schema': the labeling config)")
        extra_params = data.get("extra_params") or {}
        size = len(extra_params) if isinstance(extra_params, str) else len(json.dumps(extra_params))
        if size > settings.max_instructions_chars:
            raise BadRequest(
                f"项目说明（ML extra params）过长：{size} 字符，上限 {settings.max_instructions_chars} "
                f"(project instructions too long: over MAX_INSTRUCTIONS_CHARS={settings.max_instructions_chars})"
            )
        model = registry.get(_project_key(data), schema)
        model.setup(extra_params)  # instructions and example count may have changed
        return jsonify({"model_version": model.model_version})

    def predict() -> Any:
        data = _json_body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' 必须是任务对象列表 ('tasks' must be a list of task objects)")
        label_config = data.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("'label_config' 必须是字符串 ('label_config' must be a string)")
        params = data.get("params") or {}
        model = registry.get(_project_key(data), label_config)
        context = params.get("context") if isinstance(params, dict) else None
        predictions = model.predict(tasks, context=context)
        return jsonify({"results": predictions, "model_version": model.model_version})

    def webhook() -> Any:
        data = _json_body()
        event = data.get("action")
        if not isinstance(event, str):
            raise BadRequest("缺少 action (missing 'action')")
        if event not in model_class.TRAIN_EVENTS:
            return jsonify({"status": "ignored", "action": event}), 200
        check_webhook(data)
        project = data.get("project") if isinstance(data.get("project"), dict) else {}
        label_config = project.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("project.label_config 必须是字符串 (project.label_config must be a string)")
        key = _project_key(data)
        try:
            model = registry.get(key, label_config)
        except BadRequest:
            if label_config:
                raise
            # Not stored, and said so: acknowledging it would lose the annotation silently.
            detail = (
                f"项目 {key} 未在此后端进程 /setup 过，且事件未带 project.label_config：事件未保存。"
                "请在 Label Studio 中打开项目的模型设置让它重新连接，或在 webhook 中发送完整 payload "
                f"(project {key} unknown to this worker and the event has no project.label_config: not stored)"
            )
            logger.warning("/webhook %s: %s", event, detail)
            return jsonify({"status": 422, "detail": detail}), 422
        result = model.fit(event=event, data=data)
        return jsonify({"status": "ok", "action": event, "result": result}), 201

    def train() -> Any:
        """Legacy `/train` (Label Studio < 1.4.1): same as the Train button's START_TRAINING."""
        data = _json_body()
        key = _project_key(data)
        if not key.isdecimal():
            raise BadRequest("/train 需要项目 id (/train needs 'project': '<id>.<timestamp>')")
        model = registry.get(key, data.get("label_config"))
        # The legacy body's project is "<id>.<timestamp>"; the re-read needs the id alone.
        result = model.fit(event="START_TRAINING", data={**data, "project": {"id": int(key)}})
        return jsonify({"status": "ok", "action": "START_TRAINING", "result": result}), 201

    def health() -> Any:
        """Stock `/health` without `model_dir` (a server path is nobody's business)."""
        return jsonify({"status": "UP", "v2": os.getenv("LABEL_STUDIO_ML_BACKEND_V2", "True")})

    def versions() -> Any:
        """Stock `/versions`: the versions this worker serves for the project (no paths, no traceback)."""
        key = _project_key(_json_body())
        found = sorted({m.model_version for (p, _), m in registry.items() if p == key})
        return jsonify({"versions": found})

    def is_training() -> Any:
        """Stock `/is_training`: training is an in-process store write here, never a running job."""
        return jsonify({"is_training": False})

    app.view_functions["_setup"] = setup
    app.view_functions["_predict"] = predict
    app.view_functions["webhook"] = webhook
    def metrics() -> Any:
        """Cache hits, API requests, retries, tokens … of this worker process, for Prometheus.

        Behind basic auth like every route when it is on: the numbers reveal usage,
        and Prometheus scrape configs take `basic_auth` credentials.
        """
        return Response(METRICS.render(), content_type=CONTENT_TYPE)

    app.view_functions["_train"] = train
    app.view_functions["metrics"] = metrics
    app.view_functions["health"] = health
    app.view_functions["get_version"] = versions
    app.view_functions["_is_training"] = is_training
    imports = install_import(app, settings)  # TASKS_CREATED -> predictions (`onimport`); outermost: after the guard
    install_status_page(app, registry, settings, imports.status_table)  # for browsers (RequestGuard checked auth)

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest) -> Any:
        logger.warning("%s %s: %s", request.method, request.path, error)
        return jsonify({"status": 400, "detail": str(error)}), 400

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Any:
        """Any other error: logged with its traceback, answered without internals."""
        if isinstance(error, HTTPException):  # 404, 405, 413 …: Werkzeug's status, our JSON
            return jsonify({"status": error.code, "detail": error.description}), error.code
        if isinstance(error, RecursionError):
            return bad_request(BadRequest("JSON 嵌套过深 (JSON nested too deeply)"))
        logger.exception("%s %s failed", request.method, request.path)
        detail = f"内部错误，详见后端日志 (internal error: {type(error).__name__}; see the backend log)"
        return jsonify({"status": 500, "detail": detail}), 500

    return registry
