"""`llm.limits.SharedLimiter` against a real redis-server: one limit for many processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from my_ml_backend.llm.limits import SharedLimiter, limits_key, open_limiter
from my_ml_backend.llm.pacing import AdaptiveLimiter
from my_ml_backend.settings import load_settings
from tests.conftest import ROOT, TEST_KEY, Backend, config
from tests.fake_llm import server as fake

KEY = limits_key("http://127.0.0.1:1/v1", TEST_KEY)


def limiter(url: str, maximum: int, lease: float = 15.0) -> SharedLimiter:
    """One 'process': its own connection and its own in-process limiter."""
    return SharedLimiter(maximum, redis.Redis.from_url(url), KEY, lease=lease)


def test_the_key_is_a_digest_of_endpoint_and_key() -> None:
    assert TEST_KEY not in KEY
    assert limits_key("http://a/v1/", "k") == limits_key("http://a/v1", "k") != limits_key("http://a/v1", "k2")


def test_without_redis_the_limiter_is_per_process() -> None:
    settings = load_settings({"LLM_CONCURRENCY": "3"})
    assert type(open_limiter(settings)) is AdaptiveLimiter
    shared = open_limiter(load_settings({"LLM_CONCURRENCY": "3", "REDIS_URL": "redis://127.0.0.1:1/0"}))
    assert isinstance(shared, SharedLimiter)


def test_many_processes_never_exceed_the_shared_limit(redis_db: str) -> None:
    limiters = [limiter(redis_db, 3) for _ in range(4)]  # 4 'processes' x 4 threads, 3 slots in all
    in_flight = peak = done = 0
    lock = threading.Lock()
    full = threading.Event()  # holders wait for the cap to be reached once, however slowly the machine runs

    def work(lim: SharedLimiter) -> None:
        nonlocal in_flight, peak, done
        for _ in range(5):
            assert lim.acquire(time.monotonic() + 30)
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
                if in_flight == 3:
                    full.set()
            if not full.wait(5):  # a cap below 3 never reaches it: stop waiting, the peak tells
                full.set()
            time.sleep(0.02)
            with lock:
                in_flight -= 1
                done += 1
            lim.release(time.monotonic(), success=True)

    threads = [threading.Thread(target=work, args=(lim,)) for lim in limiters for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done == 80
    assert peak == 3  # the cap is reached and never passed
    assert redis.Redis.from_url(redis_db).zcard(f"{KEY}:slots") == 0


def test_throttling_seen_by_one_process_lowers_and_pauses_all(redis_db: str) -> None:
    a, b = limiter(redis_db, 4), limiter(redis_db, 4)
    for _ in range(2):  # two 429s in a row (half of 4): cut to 2, and everyone pauses 0.5 s
        assert a.acquire()
        paused = time.monotonic()  # the pause starts at the release, no earlier
        a.release(time.monotonic(), success=False, throttled=True, pause=0.5)
    assert a.limit == 2
    assert b.acquire(time.monotonic() + 5)
    assert time.monotonic() - paused >= 0.45  # b waited for the pause a was asked for
    assert b.limit == 2
    assert b.acquire(time.monotonic() + 5)
    assert not b.acquire(time.monotonic() + 0.2)  # two in flight: the lowered limit holds for b too
    b.release(time.monotonic(), success=True)
    b.release(time.monotonic(), success=True)
    assert b.limit == 3  # a whole round of successes: one more, for everybody
    assert a.acquire() and a.limit == 3
    a.release(time.monotonic(), success=True)


def test_a_deadline_returns_the_local_slot(redis_db: str) -> None:
    a, b = limiter(redis_db, 1), limiter(redis_db, 1)
    assert a.acquire()
    assert not b.acquire(time.monotonic() + 0.1)
    assert b.in_flight == 0  # nothing leaked in b's own limiter
    a.release(time.monotonic(), success=True)
    assert b.acquire(time.monotonic() + 1)
    b.release(time.monotonic(), success=True)


def test_redis_down_falls_back_to_the_process(caplog) -> None:  # noqa: ANN001
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers: each try costs 1 s
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    lim = SharedLimiter(2, redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=1.0), KEY)
    started = time.monotonic()
    assert lim.acquire(time.monotonic() + 5)
    assert time.monotonic() - started >= 0.9  # the first request tried Redis and waited for it
    started = time.monotonic()
    assert lim.acquire(time.monotonic() + 5)
    assert time.monotonic() - started < 0.5  # known down: not tried again for every request (a try costs 1 s)
    assert not lim.acquire(time.monotonic() + 0.1)  # the per-process limit still holds
    lim.release(time.monotonic(), success=True)
    lim.release(time.monotonic(), success=True)
    silent.close()
    assert "Redis unreachable" in caplog.text


HOLDER = """
import sys
from my_ml_backend.llm.client import LLMClient
from my_ml_backend.settings import load_settings
client = LLMClient(load_settings())
client.chat([{"role": "user", "content": "hold a slot"}])
"""


def wait_idle(llm: fake.FakeLLMServer, timeout: float = 30.0) -> None:
    """Wait for requests an earlier test abandoned (a killed process's) to end on the shared fake server.

    Still held, they end during the next test and move its in-flight count under its feet.
    """
    deadline = time.monotonic() + timeout
    while llm.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_killed_holder_frees_its_slot_within_the_lease(redis_db: str, llm: fake.FakeLLMServer,
                                                         tmp_path: Path) -> None:
    """A real process sends a request and dies with kill -9: its slot comes back within LLM_SLOT_LEASE."""
    lease = 2.0
    llm.set_default(fake.chat("ok", delay=6 * lease))
    env = {**os.environ, "MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "REDIS_URL": redis_db,
           "LLM_CONCURRENCY": "1", "LLM_SLOT_LEASE": str(lease), "LLM_CACHE": "off", "LLM_TIMEOUT": "120",
           "LOG_DIR": str(tmp_path), "DATA_DIR": str(tmp_path)}
    wait_idle(llm)  # so that the holder's request is the one in flight
    before = llm.in_flight
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, cwd=str(ROOT))
    other = SharedLimiter(1, redis.Redis.from_url(redis_db), limits_key(llm.base_url, TEST_KEY), lease=lease)
    try:
        deadline = time.monotonic() + 20
        while llm.in_flight <= before:
            assert proc.poll() is None and time.monotonic() < deadline, "the holder never sent its request"
            time.sleep(0.05)
        # Alive, it keeps its slot past its lease (renewed every lease/3).
        assert not other.acquire(time.monotonic() + 2 * lease)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        killed = time.monotonic()
        assert other.acquire(killed + 3 * lease)
        back_after = time.monotonic() - killed
    finally:
        proc.kill()
    print(f"slot back {back_after:.2f} s after kill -9 (lease {lease} s)")
    assert back_after <= lease + 0.5
    other.release(time.monotonic(), success=True)


def test_without_redis_concurrent_first_batches_share_the_process_limit(llm: fake.FakeLLMServer,
                                                                         tmp_path: Path) -> None:
    """Batches arriving together at a fresh process get one client, so one LLM_CONCURRENCY (per process)."""
    wait_idle(llm)  # so that max_in_flight counts only this test's requests
    llm.reset()
    llm.latency = 0.3
    llm.set_default(fake.chat('{"sentiment": "正面"}'))
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CONCURRENCY": "2"}
    backend = Backend(env, tmp_path)
    cfg = config("text_classification")
    try:
        threads = [threading.Thread(target=backend.predict,
                                    args=(cfg, [{"id": i, "data": {"text": f"批次 {k} 任务 {i}"}} for i in range(4)]))
                   for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        backend.stop()
    assert llm.chat_calls == 16
    assert llm.max_in_flight == 2
