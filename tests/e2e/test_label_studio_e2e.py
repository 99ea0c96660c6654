"""The backend driven by a real Label Studio 1.23.2, the way users drive it.

Each test builds its own project(s) in the session's Label Studio, connects one or more
backends (real processes) talking to the fake LLM, and checks what Label Studio STORES,
not only what the backend answers: the stored predictions are what users see, and
Label Studio silently drops, duplicates or mis-assigns them when the protocol is off.

Tasks carry a marker such as `[T3]` in their text and the fake LLM echoes it into the
TextArea answer, so every stored prediction can be tied back to the task it was made for.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface

from tests.conftest import Backend, config
from tests.e2e.conftest import StartBackend, report
from tests.e2e.label_studio import ROOT, LabelStudioClient, LabelStudioServer
from tests.fake_llm import server as fake

pytestmark = pytest.mark.e2e

ANALYSIS = config("text_analysis")  # Choices (multiple) + TextArea on $text
QA = config("technical_qa")  # TextArea on $question
ANALYSIS_CHOICES = ["技术", "市场"]
REGION = {"from_name": "category", "to_name": "text", "type": "choices", "value": {"choices": ["技术"]}}
MARKER = re.compile(r"\[([A-Z]\d+)\]")

TEXTS = [
    "新版本的推理服务把延迟降低了 40%，同时我们计划下季度进入东南亚市场。",
    "客服反馈：用户抱怨安装包太大，下载经常中断。",
    "财报显示广告收入同比增长 12%，云业务首次盈利。",
    "我们把数据库从 MySQL 迁移到了 PostgreSQL，查询性能提升明显。",
    "新品发布会定在下个月，主打轻薄与续航。",
    "团队正在评估把日志系统换成 OpenTelemetry。",
]


# -- the fake LLM's answers ------------------------------------------------------------


def marker_of(body: dict) -> str:
    """The `[T3]`-style marker of the task a chat request is about ("?" if none)."""
    found = MARKER.search(json.dumps(body.get("messages"), ensure_ascii=False))
    return found.group(1) if found else "?"


def labeler(body: dict) -> fake.Reply:
    """A valid answer for either config (unknown keys are ignored by the backend).

    Answering every control of both configs means a backend that mixed up configs would
    still get a parsable reply, and the mix-up shows in the stored `from_name`s.
    """
    mark = marker_of(body)
    answer = {"category": ANALYSIS_CHOICES, "analysis": f"{mark} 摘要", "answer": f"{mark} 回答", "_confidence": 0.9}
    return fake.chat(json.dumps(answer, ensure_ascii=False))


def chat_requests(llm: fake.FakeLLMServer) -> list[dict]:
    """The chat completion requests the fake LLM received, in order."""
    return [r for r in list(llm.requests) if r["method"] == "POST" and r["path"].endswith("/chat/completions")]


def failing_for(markers: set[str], reply: Callable[[], fake.Reply]) -> Callable[[dict], fake.Reply]:
    """`labeler`, except that the tasks with these markers get `reply()` (an error)."""

    def respond(body: dict) -> fake.Reply:
        return reply() if marker_of(body) in markers else labeler(body)

    return respond


# -- helpers -----------------------------------------------------------------------------


def analysis_tasks(count: int, prefix: str = "T") -> list[dict]:
    return [{"data": {"text": f"[{prefix}{i + 1}] {TEXTS[i % len(TEXTS)]}"}} for i in range(count)]


def qa_tasks(count: int, prefix: str = "Q") -> list[dict]:
    return [{"data": {"question": f"[{prefix}{i + 1}] 问题 {i + 1}：Python 的 GIL 是什么？"}} for i in range(count)]


def task_markers(tasks: list[dict], task_ids: list[int]) -> dict[int, str]:
    """Task id -> the marker in its text."""
    markers = {}
    for task, task_id in zip(tasks, task_ids, strict=True):
        found = MARKER.search(next(iter(task["data"].values())))
        assert found is not None
        markers[task_id] = found.group(1)
    return markers


def check_prediction(prediction: dict, label_config: str, version: str, marker: str) -> None:
    """Valid for the config, made by this model version, and made for this task."""
    assert prediction["model_version"] == version, prediction
    assert prediction["result"], prediction
    to_check = {"result": prediction["result"], "score": prediction["score"]}
    errors = LabelInterface(label_config).validate_prediction(to_check, return_errors=True)
    assert errors == [], (errors, prediction)
    values = {r["from_name"]: r["value"] for r in prediction["result"]}
    if "analysis" in values:  # the text_analysis config
        assert set(values) == {"category", "analysis"}, values
        assert values["category"] == {"choices": ANALYSIS_CHOICES}, values
        assert values["analysis"] == {"text": [f"{marker} 摘要"]}, values
    else:  # the technical_qa config
        assert set(values) == {"answer"}, values
        assert values["answer"] == {"text": [f"{marker} 回答"]}, values


def by_task(predictions: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = {}
    for prediction in predictions:
        grouped.setdefault(prediction["task"], []).append(prediction)
    return grouped


def version_for(backend: Backend, ls: LabelStudioClient, project: int) -> str:
    """The version the backend's /setup reports for the config exactly as Label Studio stored it.

    Label Studio strips the config it stores (e.g. the final newline of the XML file), and
    /setup sees that stored text, so the test must ask about the very same string.
    """
    return backend.setup(ls.project(project)["label_config"], project=f"{project}.1")


def connected_project(
    ls: LabelStudioClient, backend: Backend, title: str, count: int
) -> tuple[int, list[int], dict[int, str], str]:
    """A text-analysis project with `count` tasks, connected to `backend`: id, task ids, markers, version."""
    project = ls.create_project(title, ANALYSIS)
    tasks = analysis_tasks(count)
    task_ids = ls.import_tasks(project, tasks)
    ls.add_ml_backend(project, backend.url)
    return project, task_ids, task_markers(tasks, task_ids), version_for(backend, ls, project)


def check_each_once(stored: dict[int, list[dict]], label_config: str, version: str, markers: dict[int, str]) -> None:
    """Every task holds exactly one valid prediction of `version`, made for that task."""
    for task_id, task_predictions in stored.items():
        assert len(task_predictions) == 1, task_predictions
        check_prediction(task_predictions[0], label_config, version, markers[task_id])


def timed_retrieve(ls: LabelStudioClient, project: int) -> float:
    started = time.monotonic()
    answer = ls.retrieve_predictions(project)
    assert "Retrieved" in answer.get("detail", ""), answer
    return time.monotonic() - started


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def event_logged(backend: Backend, event: str, project: int) -> bool:
    return f"收到事件 (event received): {event}, project {project}" in backend.logs()


def descendants(pid: int) -> list[int]:
    """All live descendant processes of `pid`, from /proc (Linux)."""
    children: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in path.read_text().split()]
        except OSError:  # the thread ended while we looked
            continue
    return children + [grandchild for child in children for grandchild in descendants(child)]


def source_tree_entries() -> set[str] | None:
    """What `git status` lists under my_ml_backend/ (ignored files included); None without git.

    GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing the index: read only.
    """
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--ignored", "--", "my_ml_backend"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            check=False,
        )
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return {line[3:] for line in proc.stdout.splitlines()}


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- a. retrieve, skip, re-predict on a new model_version ---------------------------------


def test_retrieve_predicts_each_task_once_per_model_version(
    ls: LabelStudioClient, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    llm.set_responder(labeler)
    backend = start_backend(MODELSCOPE_MODEL="Qwen/Qwen3-Coder-480B-A35B-Instruct")
    project = ls.create_project("e2e retrieve", ANALYSIS)
    tasks = analysis_tasks(6)
    task_ids = ls.import_tasks(project, tasks)
    markers = task_markers(tasks, task_ids)
    ml = ls.add_ml_backend(project, backend.url)
    assert ml["state"] == "CO", ml
    version1 = version_for(backend, ls, project)
    assert ml["model_version"] == version1, ml  # what Label Studio got from /setup

    def retrieve_and_check(step: str, label_config: str, version: str, total: int, calls: int) -> None:
        seconds = timed_retrieve(ls, project)
        predictions = ls.predictions(project)
        current = [p for p in predictions if p["model_version"] == version]
        report(
            f"retrieve [{step}]: {len(task_ids)} tasks, {len(predictions)} predictions stored "
            f"({len(current)} of {version}), {llm.chat_calls} LLM calls in total, {seconds:.2f} s"
        )
        assert len(predictions) == total, Counter(p["model_version"] for p in predictions)
        assert llm.chat_calls == calls
        grouped = by_task(current)
        assert sorted(grouped) == sorted(task_ids)
        for task_id, task_predictions in grouped.items():
            assert len(task_predictions) == 1, task_predictions  # no duplicates
            check_prediction(task_predictions[0], label_config, version, markers[task_id])

    retrieve_and_check("first", ANALYSIS, version1, total=6, calls=6)
    retrieve_and_check("again", ANALYSIS, version1, total=6, calls=6)  # all skipped, no LLM call

    # Changing the labeling config changes the version: everything is predicted again, once.
    extended = ANALYSIS.replace('<Choice value="其他"/>', '<Choice value="其他"/>\n    <Choice value="运维"/>')
    assert extended != ANALYSIS
    ls.set_label_config(project, extended)
    version2 = version_for(backend, ls, project)
    assert version2 != version1
    retrieve_and_check("new config", extended, version2, total=12, calls=12)
    retrieve_and_check("new config, again", extended, version2, total=12, calls=12)

    # Restarting the backend with another model (same URL) changes the version too.
    port = backend.port
    backend.stop()
    backend = start_backend(port=port, MODELSCOPE_MODEL="Qwen/Qwen2.5-72B-Instruct")
    version3 = version_for(backend, ls, project)
    assert version3 not in (version1, version2) and version3.startswith("Qwen2.5-72B-Instruct-")
    retrieve_and_check("new model", extended, version3, total=18, calls=18)
    retrieve_and_check("new model, again", extended, version3, total=18, calls=18)
    assert {r["body"]["model"] for r in chat_requests(llm)[12:]} == {"Qwen/Qwen2.5-72B-Instruct"}


# -- b. failed LLM calls: nothing stored for the task, a later retrieve completes it ---------


def test_failed_task_is_not_stored_and_next_retrieve_completes_it(
    ls: LabelStudioClient, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    project, task_ids, markers, version = connected_project(ls, start_backend(), "e2e failure", 6)
    broken = next(task_id for task_id, mark in markers.items() if mark == "T3")

    llm.set_responder(failing_for({"T3"}, fake.server_error))  # 500 on every attempt for T3
    seconds = timed_retrieve(ls, project)
    stored = by_task(ls.predictions(project))
    report(f"retrieve, T3 failing (HTTP 500): 6 tasks, {len(stored)} stored, {llm.chat_calls} calls, {seconds:.2f} s")
    assert broken not in stored
    assert sorted(stored) == sorted(set(task_ids) - {broken})
    check_each_once(stored, ANALYSIS, version, markers)

    llm.reset()
    llm.set_responder(labeler)  # the fault clears
    seconds = timed_retrieve(ls, project)
    stored = by_task(ls.predictions(project))
    report(f"retrieve after the fault cleared: {sum(map(len, stored.values()))} stored, {llm.chat_calls} calls")
    assert llm.chat_calls == 1  # only the task that had failed
    assert sorted(stored) == sorted(task_ids)
    assert len(stored[broken]) == 1
    check_prediction(stored[broken][0], ANALYSIS, version, "T3")


def test_auth_error_stores_nothing_and_retrieve_after_fix_stores_all(
    ls: LabelStudioClient, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    backend = start_backend()
    project, task_ids, markers, version = connected_project(ls, backend, "e2e auth error", 4)

    llm.set_responder(lambda _body: fake.auth_failed())  # a wrong key fails every task alike
    seconds = timed_retrieve(ls, project)
    report(f"retrieve with a rejected API key: 4 tasks, {len(ls.predictions(project))} stored, {seconds:.2f} s")
    assert ls.predictions(project) == []
    assert "API认证失败" in backend.logs()

    llm.set_responder(labeler)
    timed_retrieve(ls, project)
    stored = by_task(ls.predictions(project))
    assert sorted(stored) == sorted(task_ids)
    check_each_once(stored, ANALYSIS, version, markers)


# -- c. the labeling view: opening a task, interactive pre-annotation -----------------------


def test_opening_a_task_predicts_it_and_interactive_annotation_answers(
    ls: LabelStudioClient, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    llm.set_responder(labeler)
    backend = start_backend()
    project = ls.create_project("e2e labeling view", ANALYSIS)
    tasks = analysis_tasks(3)
    task_ids = ls.import_tasks(project, tasks)
    markers = task_markers(tasks, task_ids)
    ml = ls.add_ml_backend(project, backend.url, is_interactive=True)
    version = version_for(backend, ls, project)

    started = time.monotonic()
    opened = ls.open_task(task_ids[0])
    seconds = time.monotonic() - started
    stored = ls.task_predictions(task_ids[0])
    report(f"open task with no prediction: {len(stored)} stored, {llm.chat_calls} LLM call, {seconds:.2f} s")
    assert len(stored) == 1 and llm.chat_calls == 1
    check_prediction(stored[0], ANALYSIS, version, markers[task_ids[0]])
    assert [p["id"] for p in opened["predictions"]] == [stored[0]["id"]]  # shown at once in the view
    ls.open_task(task_ids[0])  # has a prediction now: not predicted again
    assert llm.chat_calls == 1
    assert ls.task_predictions(task_ids[1]) == []

    context = {"result": [REGION]}
    started = time.monotonic()
    answer = ls.interactive_annotating(ml["id"], task_ids[1], context)
    seconds = time.monotonic() - started
    report(f"interactive annotation: {len(answer.get('data', {}).get('result', []))} regions, {seconds:.2f} s")
    assert "errors" not in answer, answer
    check_prediction(answer["data"], ANALYSIS, version, markers[task_ids[1]])
    assert ls.task_predictions(task_ids[1]) == []  # interactive answers are not stored
    assert [marker_of(r["body"]) for r in chat_requests(llm)] == [markers[task_ids[0]], markers[task_ids[1]]]


# -- d. two projects, two configs, one backend ----------------------------------------------


def test_two_projects_on_one_backend_keep_their_configs_when_interleaved(
    ls: LabelStudioClient, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    llm.set_responder(labeler)
    llm.latency = 0.15  # each batch takes > 0.75 s (one call at a time), so the two overlap
    backend = start_backend(LLM_CONCURRENCY="1")
    projects = {}
    for name, label_config, tasks in (
        ("A", ANALYSIS, analysis_tasks(5, prefix="A")),
        ("B", QA, qa_tasks(5, prefix="B")),
    ):
        project = ls.create_project(f"e2e two configs {name}", label_config)
        task_ids = ls.import_tasks(project, tasks)
        ls.add_ml_backend(project, backend.url, title=f"llm-{name}")
        version = version_for(backend, ls, project)
        projects[name] = (project, label_config, task_markers(tasks, task_ids), version)
    assert projects["A"][3] != projects["B"][3]

    def check_all(round_name: str) -> None:
        for name, (project, label_config, markers, version) in projects.items():
            stored = by_task(ls.predictions(project))
            assert sorted(stored) == sorted(markers), (name, round_name)
            check_each_once(stored, label_config, version, markers)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda item: ls.retrieve_predictions(item[0]), projects.values()))
    seconds = time.monotonic() - started
    report(f"two projects retrieved concurrently: 2 x 5 tasks, {llm.chat_calls} LLM calls, {seconds:.2f} s")
    assert llm.chat_calls == 10
    check_all("concurrent")
    # Both batches were in the backend at the same time (else this test proves nothing).
    times = {p: [r["time"] for r in chat_requests(llm) if marker_of(r["body"])[0] == p] for p in "AB"}
    assert min(times["A"]) < max(times["B"]) and min(times["B"]) < max(times["A"]), times

    # The backend's cache of models per config must not leak either: alternate single calls.
    for name in ("A", "B", "A"):
        project, label_config, _markers, version = projects[name]
        assert version_for(backend, ls, project) == version
    with ThreadPoolExecutor(max_workers=2) as pool:  # and retrieving again adds nothing
        list(pool.map(lambda item: ls.retrieve_predictions(item[0]), projects.values()))
    assert llm.chat_calls == 10
    check_all("again")


# -- e. Train button and annotation events -------------------------------------------------


def test_train_and_annotation_events_reach_the_backend_cleanly(
    ls: LabelStudioClient, label_studio: LabelStudioServer, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    llm.set_responder(labeler)
    tree_before = source_tree_entries()
    backend = start_backend()
    project = ls.create_project("e2e events", ANALYSIS)
    task_ids = ls.import_tasks(project, analysis_tasks(2))
    ml = ls.add_ml_backend(project, backend.url)
    hooks = [h["url"] for h in ls.webhooks(project)]
    assert hooks == [backend.url + "/webhook"], hooks  # created only with SSRF_PROTECTION_ENABLED=false

    started = time.monotonic()
    ls.train(ml["id"])
    assert wait_for(lambda: event_logged(backend, "START_TRAINING", project)), backend.logs()[-3000:]
    # The API re-checks /health and /setup on every read; the DB keeps what /webhook answered.
    [(state, error)] = label_studio.db_rows("SELECT state, error_message FROM ml_mlbackend WHERE id = ?", ml["id"])
    assert state == "TR" and not error, (state, error)

    annotation = ls.create_annotation(task_ids[0], [REGION])
    assert wait_for(lambda: event_logged(backend, "ANNOTATION_CREATED", project)), backend.logs()[-3000:]
    ls.update_annotation(annotation, [{**REGION, "value": {"choices": ["市场"]}}])
    assert wait_for(lambda: event_logged(backend, "ANNOTATION_UPDATED", project)), backend.logs()[-3000:]
    ls.delete_annotation(annotation)
    assert wait_for(lambda: event_logged(backend, "ANNOTATIONS_DELETED", project)), backend.logs()[-3000:]
    report(f"train + create/update/delete annotation events delivered in {time.monotonic() - started:.2f} s")

    logs = backend.logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert llm.chat_calls == 0  # events never call the LLM
    assert backend.proc.poll() is None
    if Path("/proc").is_dir():
        assert descendants(backend.proc.pid) == [], "the backend left child processes behind"
    tree_after = source_tree_entries()
    if tree_before is not None and tree_after is not None:
        # Source edits by whoever works in the tree meanwhile are not ours: the backend writes no .py.
        new = {p for p in tree_after - tree_before if not p.endswith((".py", ".pyc"))}
        assert not new, f"written into the source tree: {sorted(new)}"


# -- f. basic auth -----------------------------------------------------------------------


def test_basic_auth_backend_works_with_label_studio(
    ls: LabelStudioClient, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    llm.set_responder(labeler)
    user, password = "mluser", "s3cret-pass"
    backend = start_backend(BASIC_AUTH_USER=user, BASIC_AUTH_PASS=password)
    for method, path, body in (
        ("GET", "/health", None),
        ("POST", "/setup", {"project": "1.1", "schema": ANALYSIS}),
        ("POST", "/predict", {"project": "1.1", "label_config": ANALYSIS, "tasks": [{"id": 1, "data": {"text": "x"}}]}),
        ("POST", "/webhook", {"action": "START_TRAINING", "project": {"id": 1, "label_config": ANALYSIS}}),
    ):
        status, answer = backend.request(method, path, body)
        assert status == 401, (method, path, status, answer)
    assert llm.chat_calls == 0

    project = ls.create_project("e2e basic auth", ANALYSIS)
    tasks = analysis_tasks(3)
    task_ids = ls.import_tasks(project, tasks)
    markers = task_markers(tasks, task_ids)
    status, answer = ls.request("POST", "/api/ml/", {"url": backend.url, "project": project, "title": "no creds"})
    assert status == 400, (status, answer)  # Label Studio refuses a backend that answers 401
    status, answer = ls.request(
        "POST",
        "/api/ml/",
        {
            "url": backend.url,
            "project": project,
            "title": "wrong creds",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": user,
            "basic_auth_pass": "wrong",
        },
    )
    assert status == 400, (status, answer)
    ml = ls.add_ml_backend(
        project, backend.url, auth_method="BASIC_AUTH", basic_auth_user=user, basic_auth_pass=password
    )
    assert ml["state"] == "CO", ml

    seconds = timed_retrieve(ls, project)
    stored = by_task(ls.predictions(project))
    report(f"retrieve through basic auth: 3 tasks, {sum(map(len, stored.values()))} stored, {seconds:.2f} s")
    assert sorted(stored) == sorted(task_ids)
    version = stored[task_ids[0]][0]["model_version"]
    check_each_once(stored, ANALYSIS, version, markers)

    ls.train(ml["id"])  # the Train button goes through Label Studio's authenticated client
    assert wait_for(lambda: event_logged(backend, "START_TRAINING", project)), backend.logs()[-3000:]

    # Annotation events are plain webhooks: Label Studio sends only the headers set on the
    # webhook itself, never the ML backend's credentials. We reject them (they may feed
    # learning) and log how to fix it; the README tells users to add the header.
    annotation = ls.create_annotation(task_ids[0], [REGION])
    assert wait_for(lambda: "annotation webhook without credentials" in backend.logs()), backend.logs()[-3000:]
    assert not event_logged(backend, "ANNOTATION_CREATED", project)
    report("basic auth: annotation event without a header on the webhook rejected (401), with a hint logged")
    # With the Authorization header set on the webhook, events arrive.
    [hook] = ls.webhooks(project)
    ls.call("PATCH", f"/api/webhooks/{hook['id']}/", {"headers": {"Authorization": basic_auth_header(user, password)}})
    ls.update_annotation(annotation, [{**REGION, "value": {"choices": ["市场"]}}])
    assert wait_for(lambda: event_logged(backend, "ANNOTATION_UPDATED", project)), backend.logs()[-3000:]
