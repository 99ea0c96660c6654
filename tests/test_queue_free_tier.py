"""Issue 14: `batch_predict.py --queue` on a ModelScope-shaped free tier stops as the direct mode does.

The command (`run_queued`, in a thread) and an RQ worker (rq's SimpleWorker in burst mode, in
the main thread, where RQ wants its signal handlers) run in this process, against a real
redis-server and the local test server in ModelScope mode; Label Studio is the in-memory
stand-in of test_batch_free_tier (the queued job against a real Label Studio and real
`rq worker` processes is tests/e2e/test_queue_job.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from rq import Queue, SimpleWorker

from my_ml_backend.jobs import queue
from my_ml_backend.jobs.batch import Summary, default_chunk_size
from my_ml_backend.predicting.factory import build_predictor
from my_ml_backend.settings import load_settings
from tests.conftest import TEST_KEY, config
from tests.fake_llm import server as fake
from tests.test_batch_free_tier import StandInLabelStudio, reviews
from tests.test_packing import answering


@pytest.fixture()
def stand_in(
    llm: fake.FakeLLMServer, redis_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StandInLabelStudio:
    """200 reviews behind the stand-in, which the workers' `LabelStudio(...)` returns; env as `.env` would set it."""
    for name in ("LLM_TASKS_PER_CALL", "LLM_CONCURRENCY", "LLM_CACHE", "LLM_QUOTA_RESET", "MODELSCOPE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELSCOPE_API_KEY", TEST_KEY)
    monkeypatch.setenv("MODELSCOPE_API_URL", llm.base_url)
    monkeypatch.setenv("MODELSCOPE_MODEL", "A")
    monkeypatch.setenv("MODELSCOPE_FALLBACK_MODELS", "B,C")
    monkeypatch.setenv("LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("LLM_TIMEOUT", "5")
    monkeypatch.setenv("FEWSHOT_EXAMPLES", "0")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("REDIS_URL", redis_db)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://stand-in.invalid")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "stand-in")
    ls = StandInLabelStudio(reviews(200), config("text_classification"))
    monkeypatch.setattr(queue, "LabelStudio", lambda **_kw: ls)
    return ls


def run_queued_with_a_worker(ls: StandInLabelStudio) -> Summary:
    """`batch_predict.py --queue` as `main` runs it, with one worker until the command returns."""
    settings = load_settings()
    predictor = build_predictor(ls.projects.get(id=1).label_config, settings)
    connection = redis.Redis.from_url(settings.redis_url)
    result: list[Summary] = []
    command = threading.Thread(target=lambda: result.append(queue.run_queued(
        ls, 1, predictor, settings, default_chunk_size(predictor), progress=False)))  # type: ignore[arg-type]
    command.start()
    deadline = time.monotonic() + 120
    while command.is_alive() and time.monotonic() < deadline:
        SimpleWorker([Queue(queue.QUEUE, connection=connection)], connection=connection).work(
            burst=True, logging_level="WARNING")
        time.sleep(0.05)
    command.join(5)
    assert result, "the queued command did not return"
    return result[0]


def test_queued_job_stops_cleanly_when_the_quota_is_out(
    llm: fake.FakeLLMServer, stand_in: StandInLabelStudio
) -> None:
    quota = llm.modelscope(account_limit=2000, model_limits={"A": 25, "C": 30}, retired={"B": 404})
    llm.set_responder(answering())
    summary = run_queued_with_a_worker(stand_in)
    text = "\n".join(summary.lines())
    print(text)
    assert summary.predicted == summary.posted == 55 == len(stand_in.stored)
    assert summary.failed <= 1  # at most the task asked after the last answer of the chunk running then
    assert summary.models == {"A": 25, "C": 30} and summary.refusals == {"B": 1}
    assert quota.used == {"A": 25, "C": 30} and quota.refused == {"B": 1}  # not one 429 for A or C
    assert "今日额度已用完" in summary.stopped and "将于 00:00 恢复" in summary.stopped
    assert "回答的模型 (answered by): C × 30, A × 25; 拒绝 (refusals): B × 1" in text
    assert "重新运行同一命令即可继续" in text

    before = llm.chat_calls  # the same day, run again: stops before enqueuing, without a call
    again = run_queued_with_a_worker(stand_in)
    assert llm.chat_calls == before and again.predicted == 0 and again.failed == 0
    assert again.skipped == 55 and "今日额度已用完" in again.stopped

    quota.new_day()  # the next day: the same command resumes where it stopped
    settings = load_settings()
    build_predictor(stand_in.projects.get(id=1).label_config, settings).client.pool.ledger.clear()
    third = run_queued_with_a_worker(stand_in)
    assert third.skipped == 55 and third.predicted == 55 and third.models == {"A": 25, "C": 30}
    assert len({p.task for p in stand_in.stored}) == len(stand_in.stored) == 110  # no task predicted twice
