"""The Redis store against a real `redis-server` started on 127.0.0.1 by the tests.

Skipped when the binary is missing locally (`apt-get install redis-server`); under
CI=true a missing binary is a failure, so the store is never silently untested.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from my_ml_backend.llm.cache import CachedAnswer, ResponseCache, open_cache
from my_ml_backend.llm.cache_stores import CLAIM_PREFIX, REDIS_PREFIX, RedisStore
from my_ml_backend.llm.client import LLMClient
from my_ml_backend.settings import Settings, load_settings
from my_ml_backend.telemetry.metrics import CACHE_ERRORS, METRICS
from tests.conftest import TEST_KEY, Backend, config, free_port
from tests.fake_llm import server as fake

MESSAGES = [{"role": "user", "content": "hi"}]


def client(llm: fake.FakeLLMServer, url: str, **kw: object) -> LLMClient:
    params: dict = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "Qwen/A", "max_retries": 0}
    params.update(kw)
    return LLMClient(Settings(**params), cache=ResponseCache(RedisStore(url, ttl=3600)))


def test_store_round_trip_with_ttl_and_prefix(redis_db: str) -> None:
    store = RedisStore(redis_db, ttl=3600)
    assert store.get("k") is None
    store.set("k", CachedAnswer("答案").dumps())
    assert CachedAnswer.loads(store.get("k") or "") == CachedAnswer("答案")
    raw = redis.Redis.from_url(redis_db)
    assert raw.keys("*") == [(REDIS_PREFIX + "k").encode()]
    assert 3500 < raw.ttl(REDIS_PREFIX + "k") <= 3600


def test_replicas_share_answers_and_keys_still_discriminate(llm: fake.FakeLLMServer, redis_db: str) -> None:
    client(llm, redis_db).chat(MESSAGES)
    assert client(llm, redis_db).chat(MESSAGES).cached  # another replica: no call
    assert not client(llm, redis_db, model="Qwen/B").chat(MESSAGES).cached
    assert not client(llm, redis_db).chat([{"role": "user", "content": "hi!"}]).cached
    assert llm.chat_calls == 3


def test_redis_url_selects_redis_and_hides_the_password(redis_db: str, tmp_path: Path) -> None:
    settings = load_settings({"REDIS_URL": redis_db.replace("//", "//:s3cret@"), "DATA_DIR": str(tmp_path)})
    assert "s3cret" not in repr(settings)
    cache = open_cache(settings)
    assert cache is not None and isinstance(cache.store, RedisStore)
    assert "s3cret" not in cache.store.description
    assert not (tmp_path / "llm_cache.sqlite3").exists()


def test_redis_down_costs_a_miss_not_a_task(llm: fake.FakeLLMServer) -> None:
    errors = METRICS.get(CACHE_ERRORS)
    c = client(llm, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    assert c.chat(MESSAGES).text == fake.DEFAULT_CONTENT
    assert METRICS.get(CACHE_ERRORS) >= errors + 2  # read and write both failed, the call did not


def test_backend_replicas_share_the_redis_cache(llm: fake.FakeLLMServer, redis_db: str, tmp_path: Path) -> None:
    cfg = config("text_classification")
    llm.set_default(fake.chat('{"sentiment": "正面"}'))
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "REDIS_URL": redis_db}
    tasks = [{"id": i, "data": {"text": f"很好 {i}"}} for i in range(4)]
    replicas = [Backend(env, tmp_path / "a"), Backend(env, tmp_path / "b")]  # separate DATA_DIRs
    try:
        replicas[0].predict(cfg, tasks)
        assert llm.chat_calls == 4
        preds = replicas[1].predict(cfg, tasks)
        assert llm.chat_calls == 4 and all(p["result"] for p in preds)
    finally:
        for b in replicas:
            b.stop()
    assert not (tmp_path / "a" / "data" / "llm_cache.sqlite3").exists()


def test_a_request_in_flight_in_one_process_is_not_sent_again_by_another(
    llm: fake.FakeLLMServer, redis_db: str
) -> None:
    """Two clients with their own cache objects (two processes) ask the same at once: one call."""
    llm.latency = 1.0
    first, second = client(llm, redis_db), client(llm, redis_db)
    replies: list = []
    thread = threading.Thread(target=lambda: replies.append(first.chat(MESSAGES)))
    thread.start()
    while llm.in_flight < 1:
        time.sleep(0.01)
    late = second.chat(MESSAGES, deadline=time.monotonic() + 10)
    thread.join()
    assert llm.chat_calls == 1
    assert late.cached and late.text == replies[0].text
    assert redis.Redis.from_url(redis_db).keys(CLAIM_PREFIX + "*") == []  # the claim is gone with its request


def test_a_dead_claim_blocks_for_its_lease_only(redis_db: str) -> None:
    # what a process killed while computing "k" leaves behind: its claim, renewed by nobody, with a 1 s lease left
    redis.Redis.from_url(redis_db).set(CLAIM_PREFIX + "k", "token-of-a-dead-process", px=1000)
    cache = ResponseCache(RedisStore(redis_db))
    started = time.monotonic()
    assert cache.claim("k", deadline=time.monotonic() + 0.3) is False  # still claimed: wait, then give up
    assert cache.claim("k", deadline=time.monotonic() + 5) is True  # lease over: ours
    assert 0.8 < time.monotonic() - started < 2.0
    cache.release("k")


def test_two_backend_processes_pay_once_for_the_same_task(
    llm: fake.FakeLLMServer, redis_db: str, tmp_path: Path
) -> None:
    """Two real backends (replicas) asked for the same task at the same time: one request."""
    llm.latency = 1.0
    llm.set_default(fake.chat('{"sentiment": "正面"}'))
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "REDIS_URL": redis_db}
    backends = [Backend(env, tmp_path / f"b{i}") for i in range(2)]
    tasks = [{"id": 1, "data": {"text": "同一个任务"}}]
    cfg = config("text_classification")
    try:
        results: list = []
        threads = [threading.Thread(target=lambda b=b: results.append(b.predict(cfg, tasks))) for b in backends]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for b in backends:
            b.stop()
    assert len(results) == 2
    assert results[0][0]["result"][0]["value"] == results[1][0]["result"][0]["value"] == {"choices": ["正面"]}
    assert llm.chat_calls == 1
