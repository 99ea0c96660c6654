"""Predict on import, part by part: opt-in and settings, token kinds, the webhook body, the queue, webhook set-up."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from label_studio_sdk.core.api_error import ApiError

from my_ml_backend.onimport import tokens
from my_ml_backend.onimport.config import ImportConfig, import_config, opted_in
from my_ml_backend.onimport.payload import PayloadError, leading_action, read_created_tasks
from my_ml_backend.onimport.queue import ImportQueue
from my_ml_backend.onimport.queue_redis import RedisImportQueue
from my_ml_backend.onimport.queue_sqlite import SQLiteImportQueue
from my_ml_backend.onimport.status import import_rows
from my_ml_backend.onimport.webhook_setup import (
    backend_extra_params,
    backend_url,
    basic_auth_header,
    ensure_webhook,
)
from my_ml_backend.onimport.worker import free_dead_leases
from my_ml_backend.settings import load_settings

# -- opt-in and settings ---------------------------------------------------------------


def test_config_reads_its_two_variables_and_the_shared_settings(tmp_path: Path) -> None:
    env = {"LABEL_STUDIO_URL": "http://ls:8080/", "LABEL_STUDIO_API_KEY": "abc", "BASIC_AUTH_USER": "u",
           "BASIC_AUTH_PASS": "p", "DATA_DIR": str(tmp_path), "PREDICT_ON_IMPORT": "on",
           "BACKEND_PUBLIC_URL": "http://backend:9090/"}
    config = import_config(load_settings(env))
    assert config.for_all and config.public_url == "http://backend:9090" and config.label_studio_url == "http://ls:8080"
    assert config.label_studio_key == "abc" and config.basic_auth == ("u", "p") and config.data_dir == tmp_path
    assert config.can_run and config.missing_line == ""
    assert "abc" not in repr(config) and "'p'" not in repr(config)  # secrets stay out of logs


@pytest.mark.parametrize(("name", "value"), [("PREDICT_ON_IMPORT", "sometimes"), ("BACKEND_PUBLIC_URL", "backend")])
def test_a_wrong_value_stops_the_start_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        import_config(load_settings({name: value}))


def test_without_label_studio_settings_one_bilingual_line_says_so() -> None:
    config = import_config(load_settings({"PREDICT_ON_IMPORT": "on"}))
    assert not config.can_run
    assert "LABEL_STUDIO_URL" in config.missing_line and "LABEL_STUDIO_API_KEY" in config.missing_line
    assert "导入即预测" in config.missing_line and "predict on import" in config.missing_line


@pytest.mark.parametrize(("for_all", "params", "expected"), [
    (False, None, False),
    (False, {"instructions": "x"}, False),
    (False, {"predict_on_import": True}, True),
    (False, '{"predict_on_import": "on"}', True),
    (False, "plain instructions", False),
    (True, None, True),
    (True, {"predict_on_import": False}, False),  # a project may opt out of the global switch
    (True, '{"predict_on_import": "off"}', False),
])
def test_who_is_opted_in(for_all: bool, params: Any, expected: bool) -> None:
    assert opted_in(ImportConfig(for_all=for_all), params) is expected


# -- tokens ----------------------------------------------------------------------------


def jwt_token(token_type: str = "refresh", expires: timedelta = timedelta(days=365)) -> str:
    exp = int((datetime.now(UTC) + expires).timestamp())
    claims = {"token_type": token_type, "exp": exp, "user_id": 1}
    return jwt.encode(claims, "a-test-signing-key-of-32-bytes!!", algorithm="HS256")


def test_token_kinds_are_told_apart_without_a_request() -> None:
    assert tokens.token_kind("e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0") == tokens.LEGACY
    assert tokens.token_kind(jwt_token("refresh")) == tokens.PERSONAL
    assert tokens.token_kind(jwt_token("access")) == tokens.ACCESS


def test_an_expired_personal_token_fails_at_once_with_a_message_naming_it() -> None:
    with pytest.raises(tokens.LabelStudioKeyError, match="Personal Access Token.*has expired") as caught:
        tokens.connect("http://127.0.0.1:9", jwt_token(expires=timedelta(days=-1)))
    assert "Account & Settings" in str(caught.value)


def test_a_refused_key_is_explained_by_its_kind() -> None:
    refused = ApiError(status_code=401, body={"detail": "Invalid token."})
    legacy = tokens.explain(refused, "deadbeef" * 5)
    assert isinstance(legacy, tokens.LabelStudioKeyError) and "legacy token" in str(legacy)
    assert "Invalid token." in str(legacy)
    personal = tokens.explain(refused, jwt_token())
    assert "Personal Access Token" in str(personal) and "revoked" in str(personal)
    other = RuntimeError("connection refused")
    assert tokens.explain(other, "x") is other
    assert tokens.explain(ApiError(status_code=404, body={}), "x").__class__ is ApiError


# -- the webhook body ------------------------------------------------------------------


def created_body(ids: list[int], project: int = 7, text: str = "一条评论") -> bytes:
    tasks = [{"id": i, "data": {"text": text}, "meta": {}, "project": project, "inner_id": i} for i in ids]
    return json.dumps({"action": "TASKS_CREATED", "tasks": tasks, "project": {"id": project, "title": "p"}}).encode()


def test_the_body_gives_project_and_task_ids_only() -> None:
    found = read_created_tasks(io.BytesIO(created_body([3, 4, 5])))
    assert (found.action, found.project, found.task_ids, found.dropped) == ("TASKS_CREATED", 7, [3, 4, 5], 0)
    assert leading_action(created_body([1])[:64]) == "TASKS_CREATED"
    assert leading_action(b'{"project": {"id": 1}, "action": "TASKS_CREATED"}') is None  # not Label Studio's order


def test_a_body_without_the_project_object_takes_the_tasks_project() -> None:
    body = json.dumps({"action": "TASKS_CREATED", "tasks": [{"id": 1, "project": 9}]}).encode()
    assert read_created_tasks(io.BytesIO(body)).project == 9


def test_ids_past_the_limit_are_counted_not_kept_and_junk_is_refused() -> None:
    found = read_created_tasks(io.BytesIO(created_body(list(range(1, 11)))), max_ids=4)
    assert found.task_ids == [1, 2, 3, 4] and found.dropped == 6
    with pytest.raises(PayloadError):
        read_created_tasks(io.BytesIO(b'{"action": "TASKS_CREATED", "tasks": [{"id": 1'))


def test_a_5000_task_import_of_100_mb_is_read_in_bounded_memory() -> None:
    """Label Studio's largest webhook (WEBHOOK_BATCH_SIZE=5000) with ~3,300 CJK characters per task."""
    import tracemalloc

    body = created_body(list(range(1, 5001)), text="这是一条很长的中文评论，" * 300)
    assert len(body) > 100 * 1024 * 1024
    tracemalloc.start()
    started = time.perf_counter()
    found = read_created_tasks(io.BytesIO(body))
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{len(body) / 1e6:.0f} MB body: ids read in {seconds:.2f} s, peak {peak / 1e6:.1f} MB traced")
    assert len(found.task_ids) == 5000 and found.project == 7
    assert peak < 10 * 1024 * 1024  # the body is never held as Python objects


# -- the queue (SQLite and Redis) ------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImportQueue]:
    if request.param == "sqlite":
        yield SQLiteImportQueue(tmp_path / "onimport.sqlite3")
    else:
        yield RedisImportQueue(request.getfixturevalue("redis_db"))


def test_ids_are_queued_once_and_leave_the_queue_as_they_are_settled(queue: ImportQueue) -> None:
    assert queue.add(1, [5, 3, 4]) == 3
    assert queue.add(1, [3, 4, 6]) == 1  # a re-sent webhook adds only the new id
    assert queue.pending(1, 10) == [3, 4, 5, 6] and queue.pending(1, 2) == [3, 4]
    queue.settle(1, posted=[3], skipped=[4], failed=[5], errors={"no text": 1}, calls=2, busy=1.5)
    queue.settle(1, posted=[3])  # settled twice: counted once
    assert queue.pending(1, 10) == [6]
    [job] = queue.jobs()
    assert (job.total, job.posted, job.skipped, job.failed, job.calls, job.left) == (4, 1, 1, 1, 2, 1)
    assert job.errors == {"no text": 1} and job.eta() == pytest.approx(0.5)
    assert not queue.close_if_done(1)
    queue.settle(1, posted=[6])
    assert queue.close_if_done(1) and queue.jobs()[0].finished is not None
    assert queue.add(1, [6]) == 0 and len(queue.jobs()) == 1  # done ids stay known: never predicted twice
    assert queue.add(1, [7]) == 1 and len(queue.jobs()) == 2  # new tasks: a new job, listed first
    assert queue.jobs()[0].total == 1 and queue.jobs()[0].finished is None


def test_due_projects_wait_for_their_next_try_and_for_the_lease(queue: ImportQueue) -> None:
    queue.add(1, [1])
    queue.add(2, [2])
    now = time.time()
    assert queue.due(now) == [1, 2]
    assert queue.hold(1, "a", 30) and not queue.hold(1, "b", 30) and queue.hold(1, "a", 30)
    assert queue.due(now) == [2]  # held by a worker
    queue.let_go(1, "b")  # not the holder: nothing happens
    assert queue.due(now) == [2]
    queue.let_go(1, "a")
    queue.wait(2, now + 60, "等待 (waiting)", until=now + 3600)
    assert queue.due(now) == [1] and queue.due(now + 61) == [1, 2]
    row = next(r for r in import_rows(queue, now) if r.project == 2)
    assert row.state == "waiting" and row.waiting_until == pytest.approx(now + 3600) and row.note == "等待 (waiting)"
    assert queue.hold(1, "a", 0.05)
    time.sleep(0.1)
    assert queue.hold(1, "b", 30)  # a killed worker's lease runs out


def test_extra_params_are_remembered_per_project(queue: ImportQueue) -> None:
    assert queue.extra_params(3) is None
    queue.remember(3, '{"predict_on_import": true}')
    queue.remember(3, '{"predict_on_import": false}')
    assert queue.extra_params(3) == '{"predict_on_import": false}'


# -- webhook set-up --------------------------------------------------------------------


class StandInWebhooks:
    """Label Studio's webhook API as the SDK shows it, in memory (an update without `actions` clears them)."""

    def __init__(self, hooks: list[dict] | None = None) -> None:
        self.hooks = [SimpleNamespace(**h) for h in hooks or []]
        self.calls: list[str] = []

    def list(self, project: str) -> list[SimpleNamespace]:
        return [h for h in self.hooks if str(h.project) == project]

    def create(self, **kw: Any) -> None:
        self.calls.append("create")
        self.hooks.append(SimpleNamespace(id=len(self.hooks) + 1, **kw))

    def update(self, id: int, **kw: Any) -> None:  # noqa: A002 - the SDK's name
        self.calls.append("update")
        hook = next(h for h in self.hooks if h.id == id)
        for name, value in {"actions": [], **kw}.items():
            setattr(hook, name, value)


def stand_in(hooks: list[dict] | None = None, ml_urls: tuple[str, ...] = ()) -> SimpleNamespace:
    backends = [SimpleNamespace(url=u, extra_params={"from": u}) for u in ml_urls]
    ml = SimpleNamespace(list=lambda project: backends)  # noqa: ARG005
    return SimpleNamespace(webhooks=StandInWebhooks(hooks), ml=ml)


def test_a_missing_webhook_is_created_once() -> None:
    client = stand_in()
    assert "created" in ensure_webhook(client, 4, "http://backend:9090/")  # type: ignore[arg-type]
    assert "already" in ensure_webhook(client, 4, "http://backend:9090")  # type: ignore[arg-type]
    [hook] = client.webhooks.hooks
    assert hook.url == "http://backend:9090/webhook" and hook.actions == ["TASKS_CREATED"]
    assert hook.send_payload and hook.is_active and not hook.send_for_all_actions and hook.headers == {}
    assert client.webhooks.calls == ["create"]


def test_label_studios_own_all_actions_webhook_is_kept_and_given_the_auth_header() -> None:
    own = {"id": 1, "project": 4, "url": "http://backend:9090/webhook", "send_for_all_actions": True, "actions": [],
           "send_payload": True, "is_active": True, "headers": {}}
    client = stand_in([own])
    auth = basic_auth_header("u", "p")
    assert "updated" in ensure_webhook(client, 4, "http://backend:9090", auth)  # type: ignore[arg-type]
    assert "already" in ensure_webhook(client, 4, "http://backend:9090", auth)  # type: ignore[arg-type]
    [hook] = client.webhooks.hooks
    assert hook.headers == {"Authorization": auth} and hook.send_for_all_actions
    assert client.webhooks.calls == ["update"]


def test_a_disabled_or_narrow_webhook_is_turned_on_for_tasks_created_keeping_its_actions() -> None:
    narrow = {"id": 1, "project": 4, "url": "http://backend:9090/webhook", "send_for_all_actions": False,
              "actions": ["ANNOTATION_CREATED"], "send_payload": True, "is_active": False, "headers": {"X-A": "1"}}
    client = stand_in([narrow, {**narrow, "id": 2, "project": 5}])
    ensure_webhook(client, 4, "http://backend:9090")  # type: ignore[arg-type]
    hook = client.webhooks.hooks[0]
    assert hook.is_active and hook.actions == ["ANNOTATION_CREATED", "TASKS_CREATED"] and hook.headers == {"X-A": "1"}
    assert client.webhooks.hooks[1].is_active is False  # another project's webhook is left alone


def test_the_backend_url_is_the_setting_else_the_projects_one_ml_backend() -> None:
    assert backend_url(stand_in(), 1, "http://public:9090/") == "http://public:9090"  # type: ignore[arg-type]
    assert backend_url(stand_in(ml_urls=("http://ml:9090/",)), 1, None) == "http://ml:9090"  # type: ignore[arg-type]
    assert backend_url(stand_in(ml_urls=("http://a", "http://b")), 1, None) is None  # type: ignore[arg-type]


def test_a_killed_processes_lease_is_freed_by_a_process_of_the_same_host(queue: ImportQueue) -> None:
    """A backend restarted after `kill -9` takes its project up at once, not when the lease runs out."""
    for project in (1, 2, 3):
        queue.add(project, [project])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    assert queue.hold(1, f"{host}:{gone.pid}:a", 60)
    assert queue.hold(2, f"{host}:{os.getpid()}:b", 60)  # alive
    assert queue.hold(3, f"elsewhere:{gone.pid}:c", 60)  # another host's: only its lease can tell
    assert free_dead_leases(queue) == [1]
    assert queue.due(time.time()) == [1] and set(queue.holders()) == {2, 3}


def test_this_backends_extra_params_are_read_from_its_connection() -> None:
    one, two = stand_in(ml_urls=("http://ml:9090",)), stand_in(ml_urls=("http://a:1", "http://b:2/"))
    assert backend_extra_params(one, 1, None) == (True, {"from": "http://ml:9090"})  # type: ignore[arg-type]
    assert backend_extra_params(two, 1, None) == (False, None)  # type: ignore[arg-type]
    assert backend_extra_params(two, 1, "http://b:2") == (True, {"from": "http://b:2/"})  # type: ignore[arg-type]
