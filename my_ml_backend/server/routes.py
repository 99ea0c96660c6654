"""Server glue: the HTTP views Label Studio calls, installed on the stock label-studio-ml app.

label-studio-ml 1.0.9 keeps one "current model" for the whole server and reports
the wrapper's version (`INITIAL`) from `/setup`; with Label Studio 1.23 that gives
duplicate predictions on every retrieve and answers a second project with the first
project's config. So `/setup`, `/predict` and `/webhook` are re-pointed (through
Flask's `view_functions`, the app stays the stock one) to views that:
- pick the model for the config each request carries (an LRU of models per config),
- report the model's own `model_version` everywhere,
- answer malformed requests with a 400 and a message instead of a 500 traceback,
- run `fit()` in-process for webhooks (no forked process, no job folder in the source tree).
`/metrics` (stock: an empty JSON) serves our counters in Prometheus text format.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request

from ..telemetry.metrics import CONTENT_TYPE, METRICS
from .auth import require_basic_auth
from .registry import BadRequest, ModelRegistry
from .status import install_status_page

logger = logging.getLogger(__name__)


def _json_body() -> dict[str, Any]:
    data = request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        raise BadRequest("请求体必须是 JSON 对象 (request body must be a JSON object)")
    return data


def _project_key(data: dict[str, Any]) -> str:
    project = data.get("project")
    if isinstance(project, dict):  # webhooks carry the whole project
        project = project.get("id")
    return str(project or "").split(".", 1)[0]


def install(app: Flask, model_class: type, basic_auth: tuple[str, str] | None = None) -> ModelRegistry:
    """Point the stock app's `/setup`, `/predict`, `/webhook` and `/metrics` at our views."""
    registry = ModelRegistry(model_class)
    # JSON bodies in readable UTF-8 ("API Key未设置"), not "\\u672a…"; Label Studio reads both.
    app.config["JSON_AS_ASCII"] = False  # Flask < 2.3
    if hasattr(getattr(app, "json", None), "ensure_ascii"):
        app.json.ensure_ascii = False  # Flask >= 2.3
    if basic_auth:
        require_basic_auth(app, *basic_auth)

    def setup() -> Any:
        data = _json_body()
        schema = data.get("schema") or data.get("label_config")
        if not isinstance(schema, str) or not schema.strip():
            raise BadRequest("缺少 schema（标注配置）(missing 'schema': the labeling config)")
        model = registry.get(_project_key(data), schema)
        model.setup(data.get("extra_params") or {})  # instructions and example count may have changed
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
        project = data.get("project") if isinstance(data.get("project"), dict) else {}
        try:
            model = registry.get(_project_key(data), project.get("label_config"))
        except BadRequest:  # an event for a project we have not seen: still acknowledge it
            model = model_class(label_config=None)
        result = model.fit(event=event, data=data)
        return jsonify({"status": "ok", "action": event, "result": result}), 201

    def train() -> Any:
        """Legacy `/train` (Label Studio < 1.4.1): same as the Train button's START_TRAINING."""
        data = _json_body()
        model = registry.get(_project_key(data), data.get("label_config"))
        result = model.fit(event="START_TRAINING", data=data)
        return jsonify({"status": "ok", "action": "START_TRAINING", "result": result}), 201

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
    install_status_page(app, registry)  # after basic auth: its before_request must run first

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest) -> Any:
        logger.warning("%s %s: %s", request.method, request.path, error)
        return jsonify({"status": 400, "detail": str(error)}), 400

    return registry
