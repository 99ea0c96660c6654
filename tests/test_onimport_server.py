"""Predict on import in the server: `/setup` records the choice, `/webhook` queues, the page and `/metrics` show it.

The app is the stock label-studio-ml app's routes on a fresh Flask app with our views
installed, driven by Flask's test client (no socket); Label Studio is an unreachable URL,
so the worker's first turn fails and the job waits, saying why.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from my_ml_backend.model import NewModel
from my_ml_backend.server import import_webhook
from my_ml_backend.server.routes import install
from my_ml_backend.settings import load_settings, reveal
from my_ml_backend.telemetry.metrics import METRICS
from tests.conftest import config

LABEL_CONFIG = config("text_classification")


def created(ids: list[int], project: int, pad: int = 0, order: str = "label-studio") -> bytes:
    tasks = [{"id": i, "data": {"text": "评论" + "好" * pad}, "project": project} for i in ids]
    body = {"action": "TASKS_CREATED", "tasks": tasks, "project": {"id": project}}
    if order != "label-studio":
        body = {"project": {"id": project}, "tasks": tasks, "action": "TASKS_CREATED"}
    return json.dumps(body).encode()


@pytest.fixture()
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    services: list[import_webhook.ImportService] = []
    original = import_webhook.install_import

    def keep(app: Flask, settings: object) -> import_webhook.ImportService:
        services.append(original(app, settings))  # type: ignore[arg-type]
        return services[-1]

    monkeypatch.setattr("my_ml_backend.server.routes.install_import", keep)

    def make(**env: str) -> tuple[FlaskClient, import_webhook.ImportService]:
        full = {"DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs"), "FEWSHOT_EXAMPLES": "0",
                "LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k", **env}
        for name, value in full.items():
            monkeypatch.setenv(name, value)
        for name in ("PREDICT_ON_IMPORT", "BACKEND_PUBLIC_URL"):
            if name not in env:
                monkeypatch.delenv(name, raising=False)
        from label_studio_ml.api import _server

        app = Flask(f"test-{len(services)}")
        for rule in _server.url_map.iter_rules():
            if rule.endpoint != "static":
                app.add_url_rule(rule.rule, rule.endpoint, _server.view_functions[rule.endpoint], methods=rule.methods)
        settings = load_settings()
        monkeypatch.setattr(NewModel, "settings", settings, raising=False)  # what `_wsgi.py` does at start
        auth = (settings.basic_auth_user, reveal(settings.basic_auth_pass)) if settings.basic_auth_user else None
        install(app, NewModel, auth, settings)  # type: ignore[arg-type]
        return app.test_client(), services[-1]

    yield make
    for service in services:
        service.worker.stop()


def setup(client: FlaskClient, project: int, extra_params: object, **kw: object) -> None:
    body = {"project": f"{project}.1700000000", "schema": LABEL_CONFIG, "extra_params": extra_params}
    answer = client.post("/setup", json=body, **kw)
    assert answer.status_code == 200, answer.json


def test_an_opted_in_project_has_its_imported_tasks_queued_and_shown(make_app) -> None:  # noqa: ANN001
    client, service = make_app()
    setup(client, 1, {"predict_on_import": True, "instructions": "简短"})
    setup(client, 2, {"instructions": "简短"})
    assert json.loads(service.queue.extra_params(1) or "null")["predict_on_import"] is True
    before = METRICS.get("import_tasks_queued")
    answer = client.post("/webhook", data=created([11, 12, 13], 1), content_type="application/json")
    assert answer.status_code == 200 and answer.json == {
        "status": "queued", "action": "TASKS_CREATED", "project": 1, "tasks": 3}
    again = client.post("/webhook", data=created([13, 14], 1, order="other"), content_type="application/json")
    assert again.json["tasks"] == 1  # read by the view (not Label Studio's key order): only the new id
    ignored = client.post("/webhook", data=created([21], 2), content_type="application/json")
    assert ignored.status_code == 200 and ignored.json["status"] == "ignored"
    unknown = client.post("/webhook", data=created([31], 3), content_type="application/json")
    assert unknown.json["status"] == "checking"  # no /setup seen: its extra params are asked of Label Studio
    assert METRICS.get("import_tasks_queued") == before + 4
    assert service.queue.pending(2, 10) == []
    [job] = service.queue.jobs()
    assert (job.project, job.total) == (1, 4)
    # The worker tried Label Studio (unreachable here): the job waits and says why.
    service.worker.wake()
    page = ""
    for _ in range(100):
        page = client.get("/", headers={"Accept": "text/html"}).get_data(as_text=True)
        if "retrying in" in page:
            break
        time.sleep(0.05)
    section = page.split("导入即预测 (predict on import)", 1)[1]
    assert "<td>0 / 4 (0%)</td>" in section
    assert "等待 (waiting)" in section and "retrying in 60 s" in section and "ConnectError" in section
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "ml_backend_import_tasks_queued_total" in metrics and "ml_backend_import_tasks_left 4.0" in metrics


def test_other_webhooks_still_reach_the_stock_view(make_app) -> None:  # noqa: ANN001
    client, service = make_app()
    setup(client, 1, {"predict_on_import": True})
    answer = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert answer.status_code == 200 and answer.json == {"status": "ignored", "action": "PROJECT_UPDATED"}
    assert service.queue.jobs() == []


def test_an_import_over_max_request_mb_is_queued_not_refused(make_app) -> None:  # noqa: ANN001
    client, service = make_app(MAX_REQUEST_MB="0.01")  # 10 KB
    setup(client, 1, {"predict_on_import": True})
    big = created(list(range(1, 201)), 1, pad=100)
    assert len(big) > 10 * 1024 * 5
    answer = client.post("/webhook", data=big, content_type="application/json")
    assert answer.status_code == 200 and answer.json["tasks"] == 200
    # Any other body still meets the limit, before it is read.
    other = json.dumps({"action": "ANNOTATION_CREATED", "pad": "x" * 20000}).encode()
    assert client.post("/webhook", data=other, content_type="application/json").status_code == 413


def test_basic_auth_guards_the_import_webhook_too(make_app) -> None:  # noqa: ANN001
    client, service = make_app(BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p")
    header = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    setup(client, 1, {"predict_on_import": True}, headers=header)
    assert client.post("/webhook", data=created([1], 1), content_type="application/json").status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"u:x").decode()}
    refused = client.post("/webhook", data=created([1], 1), headers=wrong, content_type="application/json")
    assert refused.status_code == 401
    answer = client.post("/webhook", data=created([1], 1), headers=header, content_type="application/json")
    assert answer.status_code == 200 and answer.json["tasks"] == 1


def test_the_global_switch_without_label_studio_settings_says_so_and_changes_nothing(make_app) -> None:  # noqa: ANN001
    client, service = make_app(PREDICT_ON_IMPORT="on", LABEL_STUDIO_URL="", LABEL_STUDIO_API_KEY="")
    setup(client, 1, None)
    answer = client.post("/webhook", data=created([1, 2], 1), content_type="application/json")
    assert answer.status_code == 200 and answer.json["status"] == "ignored"
    assert "LABEL_STUDIO_URL" in answer.json["detail"] and service.queue.jobs() == []
    page = client.get("/", headers={"Accept": "text/html"}).get_data(as_text=True)
    assert "导入即预测需要 LABEL_STUDIO_URL 和 LABEL_STUDIO_API_KEY" in page
    # /predict is untouched
    predict = {"tasks": [{"id": 1, "data": {"text": "好"}}], "project": "1.1700000000", "label_config": LABEL_CONFIG}
    assert client.post("/predict", json=predict).status_code == 200
