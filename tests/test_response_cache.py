"""Response cache: keys, what is stored, SQLite under concurrent writers, and the backend paying once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from my_ml_backend.llm.cache import CachedAnswer, ResponseCache, cache_key, open_cache
from my_ml_backend.llm.cache_stores import SQLITE_FILE, SQLiteStore
from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.errors import PredictionError
from my_ml_backend.settings import Settings, load_settings
from tests.conftest import ROOT, TEST_KEY, Backend, config
from tests.fake_llm import server as fake

MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}
CFG = config("text_classification")


def client(llm: fake.FakeLLMServer, path: Path, **kw: object) -> LLMClient:
    params: dict = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "Qwen/A", "max_retries": 0}
    params.update(kw)
    return LLMClient(Settings(**params), cache=ResponseCache(SQLiteStore(path / SQLITE_FILE)))


def test_same_request_is_paid_once_and_keeps_logprobs(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_default(fake.chat('{"a": "x"}', logprobs=[("x", -0.1), ("y", -0.3)]))
    c = client(llm, tmp_path)
    first = c.chat(MESSAGES, SCHEMA)
    second = c.chat(MESSAGES, SCHEMA)
    assert llm.chat_calls == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.text == first.text and second.mode == first.mode == "json_schema"
    assert [t[:2] for t in second.tokens] == [t[:2] for t in first.tokens] == [("x", -0.1), ("y", -0.3)]
    # A new store on the same file (a restarted process) still has it.
    assert client(llm, tmp_path).chat(MESSAGES, SCHEMA).cached and llm.chat_calls == 1


def test_model_change_misses(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    client(llm, tmp_path, model="Qwen/A").chat(MESSAGES)
    client(llm, tmp_path, model="Qwen/B").chat(MESSAGES)
    assert [r["body"]["model"] for r in llm.requests] == ["Qwen/A", "Qwen/B"]
    assert client(llm, tmp_path, model="Qwen/A").chat(MESSAGES).cached and llm.chat_calls == 2


def test_prompt_change_misses(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    c = client(llm, tmp_path)
    c.chat(MESSAGES)
    c.chat([MESSAGES[0], {"role": "user", "content": "hi!"}])  # the task text
    c.chat([{"role": "system", "content": "Answer in JSON, briefly."}, MESSAGES[1]])  # the instructions
    assert llm.chat_calls == 3


@pytest.mark.parametrize(
    "change", [{"temperature": 0.7}, {"max_tokens": 99}, {"top_p": 0.5}, {"output_mode": "json_object"}]
)
def test_generation_parameter_change_misses(llm: fake.FakeLLMServer, tmp_path: Path, change: dict) -> None:
    client(llm, tmp_path).chat(MESSAGES, SCHEMA)
    client(llm, tmp_path, **change).chat(MESSAGES, SCHEMA)
    assert llm.chat_calls == 2


def test_key_covers_endpoint_and_whole_request() -> None:
    params = {"model": "m", "messages": MESSAGES, "temperature": 0.1}
    assert cache_key("http://a/v1", params) == cache_key("http://a/v1/", dict(reversed(params.items())))
    assert cache_key("http://a/v1", params) != cache_key("http://b/v1", params)
    assert cache_key("http://a/v1", params) != cache_key("http://a/v1", {**params, "extra_body": {"x": False}})


def test_errors_and_rejected_replies_are_not_cached(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    c = client(llm, tmp_path)
    llm.enqueue(fake.server_error(500), fake.chat("ok"))
    with pytest.raises(PredictionError):
        c.chat(MESSAGES)
    assert c.chat(MESSAGES).text == "ok"
    assert c.chat(MESSAGES).cached and llm.chat_calls == 2
    other = [MESSAGES[0], {"role": "user", "content": "other"}]
    c.chat(other, accept=lambda reply: False)
    assert not c.chat(other, accept=lambda reply: False).cached
    assert llm.chat_calls == 4


def test_broken_store_costs_a_miss_not_a_task(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    c = client(llm, tmp_path)
    with sqlite3.connect(tmp_path / SQLITE_FILE) as conn:
        conn.execute("DROP TABLE responses")
    assert c.chat(MESSAGES).text == fake.DEFAULT_CONTENT
    assert c.chat(MESSAGES).text == fake.DEFAULT_CONTENT and llm.chat_calls == 2


def test_cache_can_be_turned_off(tmp_path: Path) -> None:
    assert open_cache(load_settings({"LLM_CACHE": "off", "DATA_DIR": str(tmp_path)})) is None
    assert not (tmp_path / SQLITE_FILE).exists()
    cache = open_cache(load_settings({"DATA_DIR": str(tmp_path)}))
    assert cache is not None and (tmp_path / SQLITE_FILE).exists()


def test_ttl_and_size_bound(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / SQLITE_FILE, ttl=3600, max_entries=10)
    store.set("old", CachedAnswer("old").dumps())
    with sqlite3.connect(tmp_path / SQLITE_FILE) as conn:
        conn.execute("UPDATE responses SET created = created - 7200 WHERE key = 'old'")
    assert store.get("old") is None  # expired
    for i in range(599):  # the 500th write ("old" + 499) prunes down to the 10 newest
        store.set(f"k{i}", CachedAnswer(str(i)).dumps())
    assert store.count() == 10 + 100 and store.get("k0") is None and store.get("k598") is not None


WRITER = """
import sys, threading
from pathlib import Path
from my_ml_backend.llm.cache import CachedAnswer
from my_ml_backend.llm.cache_stores import SQLiteStore

path, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = SQLiteStore(path)

def write(thread):
    for i in range(n):
        key = f"{tag}-{thread}-{i}"
        store.set(key, CachedAnswer(key * 10).dumps())
        store.set(f"shared-{i}", CachedAnswer(f"shared-{i}").dumps())
        assert CachedAnswer.loads(store.get(key)).text == key * 10

threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_concurrent_writers_in_threads_and_processes(tmp_path: Path) -> None:
    path, n = tmp_path / SQLITE_FILE, 150
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(n)], cwd=ROOT, stderr=subprocess.PIPE)
        for tag in ("p1", "p2")
    ]
    store = SQLiteStore(path)
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            for i in range(n):
                key = f"main-{thread}-{i}"
                store.set(key, CachedAnswer(key * 10).dumps())
                store.set(f"shared-{i}", CachedAnswer(f"shared-{i}").dumps())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert not errors
    fresh = SQLiteStore(path)
    assert fresh.count() == 3 * 4 * n + n  # nothing lost
    for tag in ("main", "p1", "p2"):
        for thread in range(4):
            for i in range(n):
                key = f"{tag}-{thread}-{i}"
                entry = CachedAnswer.loads(fresh.get(key) or "")
                assert entry is not None and entry.text == key * 10
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def echo_label(body: dict) -> fake.Reply:
    prompt = body["messages"][-1]["content"]
    label = next(v for v in ("正面", "负面", "中性") if f"<<<\n{v}" in prompt)
    return fake.chat(f'{{"sentiment": "{label}"}}')


def values(preds: list[dict]) -> list:
    return [[r["value"] for r in p.get("result", [])] for p in preds]


def calls_per_text(llm: fake.FakeLLMServer) -> Counter[str]:
    return Counter(r["body"]["messages"][-1]["content"].split("<<<\n", 1)[1].split("\n>>>")[0] for r in llm.requests)


def test_backend_rerun_and_restart_make_no_call(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(echo_label)
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CONCURRENCY": "4"}
    tasks = [{"id": i, "data": {"text": f"{label} {i}"}} for i, label in enumerate(["正面", "负面", "中性"] * 2)]
    b = Backend(env, tmp_path)
    try:
        first = b.predict(CFG, tasks)
        assert llm.chat_calls == 6
        again = b.predict(CFG, tasks)
        assert llm.chat_calls == 6 and values(again) == values(first)  # the rerun paid nothing
        assert "缓存命中 6/未命中 0" in b.logs() and "API 请求 0" in b.logs()
    finally:
        b.stop()
    b = Backend(env, tmp_path)  # same DATA_DIR: the SQLite file outlives the process
    try:
        assert values(b.predict(CFG, tasks)) == values(first) and llm.chat_calls == 6
    finally:
        b.stop()
    b = Backend({**env, "MODELSCOPE_MODEL": "Qwen/Other"}, tmp_path)
    try:
        b.predict(CFG, tasks)
        assert llm.chat_calls == 12  # another model: every answer asked again
    finally:
        b.stop()


def test_answers_finished_after_the_deadline_serve_the_next_retrieve(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """Deadline 2 s, 1.5 s per call, one at a time: the second call is still running at the deadline."""
    llm.set_responder(echo_label)
    llm.latency = 1.5
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "ML_TIMEOUT_PREDICT": "12"}
    tasks = [{"id": i, "data": {"text": f"{label} {i}"}} for i, label in enumerate(["正面", "负面", "中性"])]
    b = Backend(env, tmp_path)
    try:
        started = time.monotonic()
        first = b.predict(CFG, tasks)
        assert time.monotonic() - started < 3.0  # the running call did not hold the batch
        assert first[0]["result"] and "result" not in first[1] and "result" not in first[2]
        # Asked again at once: task 1's call is still in flight; it is awaited, not paid twice.
        second = b.predict(CFG, tasks)
        assert second[1]["result"][0]["value"] == {"choices": ["负面"]}
        time.sleep(1.2)  # task 2's call, started before the second deadline, finishes in the background
        third = b.predict(CFG, tasks)
        assert [p["result"][0]["value"]["choices"] for p in third] == [["正面"], ["负面"], ["中性"]]
    finally:
        b.stop()
    assert calls_per_text(llm) == Counter({"正面 0": 1, "负面 1": 1, "中性 2": 1})  # each task paid once
