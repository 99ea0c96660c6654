"""Predict on import with a real Label Studio 1.23.2: pre-labels are there with no click.

Each test connects a backend to a project with `{"predict_on_import": true}` in its extra
params, imports tasks through Label Studio's API and waits for the predictions Label Studio
stores: one per task, with the backend's `model_version`, within the time the issue allows.
The LLM is the local fake with a fixed latency; the figures are reported in the summary.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable

from tests.conftest import Backend, config, free_port
from tests.e2e.conftest import StartBackend, report
from tests.e2e.label_studio import LabelStudioClient, LabelStudioServer
from tests.fake_llm import server as fake
from tests.test_batch_free_tier import reviews
from tests.test_packing import answering

LABEL_CONFIG = config("text_classification")
OPT_IN = {"predict_on_import": True}


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def tasks(n: int) -> list[dict]:
    return [t["data"] for t in reviews(n)]


def backend_env(label_studio: LabelStudioServer, key: str, **env: str) -> dict[str, str]:
    return {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": key, "FEWSHOT_EXAMPLES": "0", **env}


def connect(ls: LabelStudioClient, backend: Backend, title: str, extra_params: dict | None) -> int:
    project = ls.create_project(title, LABEL_CONFIG)
    fields = {"extra_params": extra_params} if extra_params is not None else {}
    ls.add_ml_backend(project, backend.url, **fields)
    return project


def tasks_created_hooks(ls: LabelStudioClient, project: int, backend: Backend) -> list[dict]:
    return [h for h in ls.webhooks(project) if h["url"] == backend.url + "/webhook" and h["is_active"]
            and (h["send_for_all_actions"] or "TASKS_CREATED" in h["actions"])]


def version_of(ls: LabelStudioClient, backend: Backend, project: int, extra_params: dict) -> str:
    """The version the backend reports to Label Studio for the project (its config as Label Studio stores it)."""
    status, body = backend.post("/setup", {"project": f"{project}.1", "schema": ls.project(project)["label_config"],
                                           "extra_params": extra_params})
    assert status == 200, body
    return body["model_version"]


def stored(ls: LabelStudioClient, project: int) -> int:
    """Predictions Label Studio holds for the project (a count: cheaper for it than listing them while it works)."""
    return int(ls.project(project)["total_predictions_number"])


def per_task(ls: LabelStudioClient, project: int) -> Counter[int]:
    return Counter(p["task"] for p in ls.predictions(project))


def test_300_imported_tasks_get_one_prediction_each_with_no_click(
    ls: LabelStudioClient, label_studio: LabelStudioServer, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    latency, concurrency, n = 0.3, 4, 300
    llm.latency = latency
    llm.set_responder(answering())
    port = free_port()
    backend = start_backend("onimport", port=port, **backend_env(
        label_studio, label_studio.installation.token, LLM_CONCURRENCY=str(concurrency),
        BACKEND_PUBLIC_URL=f"http://127.0.0.1:{port}"))
    opted = connect(ls, backend, "predict on import", {**OPT_IN, "instructions": "只看评论本身"})
    plain = connect(ls, backend, "no opt-in", {"instructions": "只看评论本身"})
    assert wait_for(lambda: "predict on import webhook" in backend.logs(), 20), backend.logs()[-3000:]
    [hook] = tasks_created_hooks(ls, opted, backend)  # one, however often /setup runs
    plain_hooks = ls.webhooks(plain)
    # The project without the opt-in: only Label Studio's own webhook for its ML backend, none from us.
    assert [(h["url"], h["send_for_all_actions"]) for h in plain_hooks] == [(backend.url + "/webhook", True)]

    ls.import_tasks(plain, tasks(20))
    started = time.monotonic()
    ids = ls.import_tasks(opted, tasks(n))
    bound = n / concurrency * latency * 1.3 + 30
    assert wait_for(lambda: stored(ls, opted) >= n, bound, step=1.0), (
        stored(ls, opted), backend.logs()[-3000:])
    seconds = time.monotonic() - started
    report(f"predict on import: {n} tasks imported -> {n} predictions in {seconds:.1f} s "
           f"(bound {bound:.1f} s = {n}/{concurrency} x {latency} s x 1.3 + 30 s; {llm.chat_calls} LLM calls)")
    time.sleep(2)  # nothing more arrives after the last one
    predictions = ls.predictions(opted)
    assert Counter(p["task"] for p in predictions) == Counter(dict.fromkeys(ids, 1))
    extra_params = {**OPT_IN, "instructions": "只看评论本身"}
    assert {p["model_version"] for p in predictions} == {version_of(ls, backend, opted, extra_params)}
    assert version_of(ls, backend, opted, {}) not in {p["model_version"] for p in predictions}  # the project's own
    assert llm.chat_calls == n
    assert ls.predictions(plain) == []  # no opt-in: nothing predicted on import
    html = _page(backend)
    section = html.split("导入即预测 (predict on import)", 1)[1]
    assert f"<td>{n} / {n} (100%)</td>" in section and "完成 (finished)" in section
    metrics = _text(backend, "/metrics")
    assert re.search(rf"ml_backend_import_predictions_posted_total {n}\.0", metrics), metrics[-2000:]
    assert re.search(rf"ml_backend_import_tasks_queued_total {n}\.0", metrics)


def test_a_backend_killed_mid_job_finishes_after_a_restart_with_a_personal_access_token(
    ls: LabelStudioClient, label_studio: LabelStudioServer, start_backend: StartBackend, llm: fake.FakeLLMServer,
    tmp_path_factory,  # noqa: ANN001
) -> None:
    """`kill -9` in the middle; a Personal Access Token (created through Label Studio's API) instead of the legacy."""
    status, body = ls.request("POST", "/api/token/")
    assert status == 201, body
    token = body["token"]
    assert token.count(".") == 2  # a JWT refresh token, as Account & Settings shows it
    llm.latency = 0.3
    llm.set_responder(answering())
    port, data = free_port(), tmp_path_factory.mktemp("onimport-data")
    env = backend_env(label_studio, token, LLM_CONCURRENCY="2", PREDICT_ON_IMPORT="on", DATA_DIR=str(data))
    backend = start_backend("killed", port=port, **env)
    project = connect(ls, backend, "killed mid-job", None)  # the global switch: no extra params needed
    assert wait_for(lambda: "predict on import webhook" in backend.logs(), 20), backend.logs()[-3000:]
    assert len(tasks_created_hooks(ls, project, backend)) == 1
    n = 120
    ids = ls.import_tasks(project, tasks(n))
    assert wait_for(lambda: stored(ls, project) >= 30, 60, step=0.5), backend.logs()[-3000:]
    backend.proc.kill()  # SIGKILL: no clean-up of any kind
    backend.proc.wait(10)
    at_kill = stored(ls, project)
    restarted = time.monotonic()
    backend = start_backend("restarted", port=port, **env)
    assert wait_for(lambda: stored(ls, project) >= n, 90, step=1.0), backend.logs()[-3000:]
    report(f"predict on import, kill -9 at {at_kill}/{n} predictions: finished {time.monotonic() - restarted:.1f} s "
           f"after the restart; Personal Access Token")
    time.sleep(2)
    assert per_task(ls, project) == Counter(dict.fromkeys(ids, 1))  # no task lost, none predicted twice


def test_a_daily_cap_pauses_the_job_with_the_resume_time_and_it_finishes_after_the_reset(
    ls: LabelStudioClient, label_studio: LabelStudioServer, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    quota = llm.modelscope(account_limit=2000, model_limits={fake.DEFAULT_MODEL: 40})
    llm.set_responder(answering())
    backend = start_backend("quota", **backend_env(label_studio, label_studio.installation.token,
                                                   LLM_CONCURRENCY="2", LLM_QUOTA_RESET="00:00 UTC"))
    project = connect(ls, backend, "daily cap", OPT_IN)
    assert wait_for(lambda: "predict on import webhook" in backend.logs(), 20), backend.logs()[-3000:]
    ids = ls.import_tasks(project, tasks(60))
    assert wait_for(lambda: "暂停 (import job paused)" in backend.logs(), 60), backend.logs()[-3000:]
    assert stored(ls, project) == 40
    assert "resumes by itself at" in backend.logs() and "00:00 UTC" in backend.logs()
    html = _page(backend)
    assert "等待额度至 (waiting for quota until)" in html and "00:00 UTC" in html, html[-3000:]
    assert "<td>40 / 60 (67%)</td>" in html
    # The test clock: a new quota day at the endpoint and in the backend's ledger.
    quota.new_day()
    started = time.monotonic()
    backend.forget_quota()
    assert wait_for(lambda: stored(ls, project) >= 60, 60, step=0.5), backend.logs()[-3000:]
    report(f"predict on import, daily cap of 40 on 60 tasks: paused, resumed {time.monotonic() - started:.1f} s "
           "after the reset")
    time.sleep(1)
    assert per_task(ls, project) == Counter(dict.fromkeys(ids, 1))


def _text(backend: Backend, path: str, accept: str = "*/*") -> str:
    import urllib.request

    request = urllib.request.Request(backend.url + path, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read().decode("utf-8")


def _page(backend: Backend) -> str:
    return _text(backend, "/", accept="text/html")
