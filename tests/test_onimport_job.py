"""Predict on import: the import job against the local LLM server and an in-memory Label Studio.

The real Label Studio 1.23.2 runs are in tests/e2e/test_predict_on_import_e2e.py; here the
job's decisions are pinned down fast: every task predicted once, skips, the quota pause
and the resume after the reset, an outage that loses nothing, and the worker thread.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from label_studio_sdk import PredictionRequest
from label_studio_sdk.core.api_error import ApiError

from my_ml_backend.onimport.config import ImportConfig
from my_ml_backend.onimport.queue_sqlite import SQLiteImportQueue
from my_ml_backend.onimport.runner import ImportRun
from my_ml_backend.onimport.status import import_rows
from my_ml_backend.onimport.worker import ImportWorker, free_dead_leases
from my_ml_backend.predicting.factory import build_predictor
from my_ml_backend.predicting.predictor import Predictor
from my_ml_backend.settings import Settings
from tests.conftest import TEST_KEY, config
from tests.fake_llm import server as fake
from tests.test_batch_free_tier import reviews
from tests.test_packing import answering

LABEL_CONFIG = config("text_classification")
CONFIG = ImportConfig(label_studio_url="http://stand-in.invalid", label_studio_key="stand-in")


class StandInLabelStudio:
    """The SDK calls the import job makes (project, Data Manager read by ids, prediction post), in memory."""

    def __init__(self, tasks: list[dict]) -> None:
        self.data = {t["id"]: t["data"] for t in tasks}
        self.stored: list[SimpleNamespace] = []
        self.reads = self.imports = 0
        self.projects = SimpleNamespace(get=lambda id: SimpleNamespace(label_config=LABEL_CONFIG),  # noqa: A006, ARG005
                                        import_predictions=self._import)
        self.tasks = SimpleNamespace(list=self._list)
        self.predictions = SimpleNamespace(create=self._create)
        self.delete_before_post: set[int] = set()  # deleted between the chunk's read and its post

    def _list(self, project: int, query: str, fields: str, page_size: int, include: str) -> list[SimpleNamespace]:
        assert fields == "all" and "predictions_model_versions" in include
        self.reads += 1
        ids = json.loads(query)["selectedItems"]["included"]
        return [SimpleNamespace(id=i, data=self.data[i], predictions_model_versions=",".join(self.versions(i)))
                for i in ids if i in self.data]

    def versions(self, task: int) -> list[str]:
        return [p.model_version for p in self.stored if p.task == task]

    def _create(self, task: int, result: list, score: float | None, model_version: str) -> None:
        if task not in self.data:
            raise ApiError(status_code=404, body={"detail": "Not found."})
        self.stored.append(SimpleNamespace(task=task, result=result, model_version=model_version))

    def _import(self, id: int, request: list[PredictionRequest]) -> None:  # noqa: A002 - the SDK's name
        """Label Studio's prediction import: all or nothing, refused when a task is not in the project."""
        for task in self.delete_before_post:
            self.data.pop(task, None)
        if any(r.task not in self.data for r in request):
            raise ApiError(status_code=400, body={"detail": "contains invalid task field"})
        self.imports += 1
        for r in request:
            self._create(r.task, r.result, r.score, r.model_version or "")

    def predicted(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for p in self.stored:
            counts[p.task] = counts.get(p.task, 0) + 1
        return counts


def settings_for(llm: fake.FakeLLMServer, tmp_path: Path, **kw: Any) -> Settings:
    params: dict[str, Any] = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "A", "timeout": 5.0,
                              "max_retries": 0, "data_dir": tmp_path / "data", "fewshot_k": 0, "fewshot_auto": False,
                              "concurrency": 4}
    params.update(kw)
    return Settings(**params)


def imported_reviews(llm: fake.FakeLLMServer, tmp_path: Path, n: int) -> tuple[StandInLabelStudio, Predictor]:
    """A stand-in Label Studio holding reviews 1..n, and the project's predictor on the fake LLM."""
    return StandInLabelStudio(reviews(n, start=1)), build_predictor(LABEL_CONFIG, settings_for(llm, tmp_path))


def run(queue: SQLiteImportQueue, ls: StandInLabelStudio, predictor: Predictor, project: int = 1) -> str:
    return ImportRun(queue, CONFIG, project, "test-worker", lambda p, cfg, params: predictor,
                     connect=lambda url, key: ls).run()  # type: ignore[arg-type, return-value]


@pytest.fixture()
def queue(tmp_path: Path) -> SQLiteImportQueue:
    return SQLiteImportQueue(tmp_path / "onimport.sqlite3")


def test_every_imported_task_gets_one_prediction_of_the_backends_version(
    llm: fake.FakeLLMServer, tmp_path: Path, queue: SQLiteImportQueue
) -> None:
    llm.set_responder(answering())
    ls, predictor = imported_reviews(llm, tmp_path, 60)
    queue.add(1, list(range(1, 61)))
    assert run(queue, ls, predictor) == "finished"
    assert ls.predicted() == dict.fromkeys(range(1, 61), 1)
    assert {p.model_version for p in ls.stored} == {predictor.model_version}
    assert all(p.result for p in ls.stored)
    [row] = import_rows(queue)
    assert (row.state, row.done, row.total, row.failed, row.calls) == ("finished", 60, 60, 0, 60)
    assert ls.reads == ls.imports == 4  # one Data Manager read and one post per chunk of 16 (4 x LLM_CONCURRENCY)


def test_tasks_already_predicted_or_deleted_are_skipped_not_predicted_again(
    llm: fake.FakeLLMServer, tmp_path: Path, queue: SQLiteImportQueue
) -> None:
    """What a worker killed between posting and recording leaves behind: the next one posts nothing twice."""
    llm.set_responder(answering())
    ls, predictor = imported_reviews(llm, tmp_path, 20)
    for task in (2, 3):
        ls._create(task, [{"from": "earlier run"}], None, predictor.model_version)
    ls._create(4, [], None, "another-version")  # another model's prediction does not count
    del ls.data[5]  # deleted in Label Studio since the import
    queue.add(1, list(range(1, 21)))
    assert run(queue, ls, predictor) == "finished"
    counts = ls.predicted()
    assert counts == {**dict.fromkeys([i for i in range(1, 21) if i != 5], 1), 4: 2}
    assert llm.chat_calls == 17
    [job] = queue.jobs()
    assert (job.posted, job.skipped, job.failed) == (17, 3, 0)


def test_a_task_deleted_while_its_chunk_is_predicted_costs_only_its_own_prediction(
    llm: fake.FakeLLMServer, tmp_path: Path, queue: SQLiteImportQueue
) -> None:
    llm.set_responder(answering())
    ls = StandInLabelStudio(reviews(10, start=1))
    ls.delete_before_post = {3}
    queue.add(1, list(range(1, 11)))
    assert run(queue, ls, build_predictor(LABEL_CONFIG, settings_for(llm, tmp_path))) == "finished"
    assert ls.predicted() == {i: 1 for i in range(1, 11) if i != 3}
    [row] = import_rows(queue)
    assert (row.done, row.failed) == (9, 1) and "posting the prediction failed" in row.reasons[0][0]


def test_a_task_that_fails_for_its_own_reason_is_failed_with_the_reason(
    llm: fake.FakeLLMServer, tmp_path: Path, queue: SQLiteImportQueue
) -> None:
    llm.set_responder(answering())
    tasks = reviews(10, start=1)
    tasks[3]["data"] = {"other": "no text under the config's key"}
    ls = StandInLabelStudio(tasks)
    queue.add(1, list(range(1, 11)))
    assert run(queue, ls, build_predictor(LABEL_CONFIG, settings_for(llm, tmp_path))) == "finished"
    [row] = import_rows(queue)
    assert (row.done, row.failed) == (9, 1) and 4 not in ls.predicted()
    [(reason, count)] = row.reasons
    assert count == 1 and "text" in reason.lower()


def test_quota_out_pauses_with_the_reset_time_and_resumes_after_it(
    llm: fake.FakeLLMServer, tmp_path: Path, queue: SQLiteImportQueue, caplog: pytest.LogCaptureFixture
) -> None:
    quota = llm.modelscope(account_limit=2000, model_limits={"A": 25})
    llm.set_responder(answering())
    ls, predictor = imported_reviews(llm, tmp_path, 40)
    queue.add(1, list(range(1, 41)))
    with caplog.at_level(logging.WARNING, logger="my_ml_backend.onimport.runner"):
        note = run(queue, ls, predictor)
    reset = predictor.client.pool.ledger.clock.next_reset()
    assert "今日额度已用完" in note and f"{reset:%H:%M}" in note and "resumes by itself" in note
    assert note in caplog.text
    assert len(ls.stored) == 25 and set(ls.predicted().values()) == {1}
    [row] = import_rows(queue)
    assert row.state == "waiting" and row.waiting_until == pytest.approx(reset.timestamp())
    assert row.failed == 0 and row.done == 25  # the tasks refused by the quota wait, they do not fail
    assert queue.due(time.time()) == []  # not before the next look at the ledger
    calls = llm.chat_calls
    assert "今日额度已用完" in run(queue, ls, predictor) and llm.chat_calls == calls  # same day: no call spent

    quota.new_day()  # the test clock: a new quota day, on the endpoint and in the ledger
    predictor.client.pool.ledger.clear()
    assert run(queue, ls, predictor) == "finished"
    assert ls.predicted() == dict.fromkeys(range(1, 41), 1)
    [row] = import_rows(queue)
    assert (row.state, row.done, row.failed, row.note) == ("finished", 40, 0, "")


def test_an_endpoint_outage_pauses_the_job_and_loses_no_task(
    llm: fake.FakeLLMServer, tmp_path: Path, queue: SQLiteImportQueue
) -> None:
    llm.set_default(fake.server_error(503))
    ls, predictor = imported_reviews(llm, tmp_path, 40)
    queue.add(1, list(range(1, 41)))
    note = run(queue, ls, predictor)
    assert "every task of the last chunks failed" in note
    [job] = queue.jobs()
    assert (job.posted, job.failed, job.left) == (0, 0, 40) and job.next_try > time.time() + 30
    llm.set_default(None)
    llm.set_responder(answering())
    queue.wait(1, 0.0, "")
    assert run(queue, ls, predictor) == "finished" and ls.predicted() == dict.fromkeys(range(1, 41), 1)


def test_the_worker_thread_takes_new_imports_at_once(
    llm: fake.FakeLLMServer, tmp_path: Path, queue: SQLiteImportQueue
) -> None:
    llm.set_responder(answering())
    ls, predictor = imported_reviews(llm, tmp_path, 30)
    worker = ImportWorker(queue, CONFIG, lambda p, cfg, params: predictor, poll=60,  # type: ignore[arg-type]
                          connect=lambda url, key: ls).start()  # type: ignore[arg-type, return-value]
    try:
        queue.add(1, list(range(1, 16)))
        queue.add(2, list(range(16, 31)))
        worker.wake()  # what the webhook does; without it the next look is a minute away
        deadline = time.monotonic() + 30
        while len(ls.stored) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    assert ls.predicted() == dict.fromkeys(range(1, 31), 1)
    assert sorted(r.project for r in import_rows(queue) if r.state == "finished") == [1, 2]


def test_with_redis_an_rq_worker_takes_the_job_and_a_killed_workers_project_is_taken_again(
    llm: fake.FakeLLMServer, tmp_path: Path, redis_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's thread only enqueues; `rq worker llm-preannotation` (here rq's SimpleWorker) predicts."""
    import redis
    from rq import Queue, SimpleWorker

    from my_ml_backend.jobs.queue import QUEUE
    from my_ml_backend.onimport import tokens
    from my_ml_backend.onimport import worker as worker_module
    from my_ml_backend.onimport.queue_redis import RedisImportQueue

    llm.set_responder(answering())
    ls, predictor = imported_reviews(llm, tmp_path, 30)
    monkeypatch.setattr(worker_module, "project_predictor", lambda p, cfg, params: predictor)
    monkeypatch.setattr(tokens, "connect", lambda url, key: ls)
    for name, value in {"REDIS_URL": redis_db, "LABEL_STUDIO_URL": "http://stand-in.invalid",
                        "LABEL_STUDIO_API_KEY": "stand-in", "DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    queue = RedisImportQueue(redis_db)
    queue.add(1, list(range(1, 31)))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert queue.hold(1, f"{socket.gethostname()}:{gone.pid}:rq", 60)  # a worker killed with -9 mid-job
    server_side = ImportWorker(queue, ImportConfig(label_studio_url="http://stand-in.invalid",
                                                   label_studio_key="stand-in", redis_url=redis_db))
    assert free_dead_leases(queue) == [1]
    assert [server_side.run_or_enqueue(p) for p in queue.due(time.time())] == ["enqueued"]
    assert server_side.run_or_enqueue(1) == "already enqueued"  # the next look does not enqueue it twice
    class BurstWorker(SimpleWorker):
        """No command channel: with redis-py 8.2, rq 3.0's pubsub thread holds a burst worker's exit for 60 s."""

        def subscribe(self) -> None:
            pass

    connection = redis.Redis.from_url(redis_db)
    BurstWorker([Queue(QUEUE, connection=connection)], connection=connection).work(burst=True, logging_level="WARNING")
    assert ls.predicted() == dict.fromkeys(range(1, 31), 1)
    [row] = import_rows(queue)
    assert (row.state, row.done, row.total) == ("finished", 30, 30)
