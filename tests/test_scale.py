"""Two replicas, each gunicorn with 2 workers, one Redis: one client to the endpoint, one scrape per replica.

The issue's acceptance run: LLM_CONCURRENCY=4 shared through Redis, the local test
server answering in 0.5 s, eight 20-task batches sent at once (four per replica).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, TEST_KEY, config, free_port
from tests.fake_llm import server as fake
from tests.test_metrics import parse

CFG = config("text_classification")
LATENCY = 0.5
CONCURRENCY = 4
BATCHES, BATCH_SIZE = 8, 20

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gunicorn and /proc: Linux only")


class Replica:
    """`gunicorn -c gunicorn.conf.py --workers 2` as scripts/start.sh runs it."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MODELSCOPE_", "LLM_", "PROMETHEUS_", "REDIS_"))}
        full_env.update({"LOG_DIR": str(tmp / "logs"), "DATA_DIR": str(tmp / "data"), **env})
        self.log = open(tmp / "gunicorn.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "2", "--threads", "8", "--timeout", "120", "my_ml_backend._wsgi:app"],
            cwd=str(ROOT), env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError((tmp / "gunicorn.log").read_text(errors="replace")) from None
                time.sleep(0.2)

    def predict(self, tasks: list[dict]) -> list[dict]:
        body = json.dumps({"tasks": tasks, "project": "1.1700000000", "label_config": CFG}).encode()
        req = urllib.request.Request(self.url + "/predict", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())["results"]

    def scrape(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            return parse(resp.read().decode())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def test_two_replicas_share_one_limit_and_their_scrapes_add_up(
    redis_db: str, llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    deadline = time.monotonic() + 30
    while llm.in_flight:  # a request another test left behind must not count in max_in_flight
        assert time.monotonic() < deadline
        time.sleep(0.1)
    llm.reset()
    llm.latency = LATENCY
    llm.set_default(fake.chat('{"sentiment": "正面"}'))
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "REDIS_URL": redis_db,
           "LLM_CONCURRENCY": str(CONCURRENCY), "LLM_TIMEOUT": "30"}
    replicas = [Replica(env, tmp_path / f"replica{i}") for i in range(2)]
    try:
        for r in replicas:  # warm every worker (model built, connections open) before timing
            for _ in range(4):
                assert r.scrape()["ml_backend_api_requests_total"] == 0
        results: dict[int, list[dict]] = {}
        errors: list[BaseException] = []

        def send(batch: int) -> None:
            tasks = [{"id": batch * 100 + i, "data": {"text": f"批次 {batch} 任务 {i}"}} for i in range(BATCH_SIZE)]
            try:
                results[batch] = replicas[batch % 2].predict(tasks)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(b,)) for b in range(BATCHES)]
        started = time.monotonic()
        for t in threads:
            t.start()
        scrapes: list[float] = []
        while any(t.is_alive() for t in threads):  # scrapes taken mid-run add up too (never more than sent)
            scrapes.append(sum(r.scrape()["ml_backend_api_requests_total"] for r in replicas))
            time.sleep(1)
        elapsed = time.monotonic() - started
        for t in threads:
            t.join()
        assert not errors, errors
        totals = [sum(r.scrape()["ml_backend_api_requests_total"] for r in replicas) for _ in range(4)]
        per_replica = [r.scrape()["ml_backend_api_requests_total"] for r in replicas]
    finally:
        for r in replicas:
            r.stop()
    ideal = math.ceil(BATCHES * BATCH_SIZE / CONCURRENCY) * LATENCY
    print(f"\n2 replicas x 2 workers, LLM_CONCURRENCY={CONCURRENCY}, {BATCHES}x{BATCH_SIZE} tasks: "
          f"{elapsed:.1f} s (ideal {ideal:.1f} s, ratio {elapsed / ideal:.2f}); server max in flight "
          f"{llm.max_in_flight}; requests {llm.chat_calls}; scrapes {per_replica} -> {totals[-1]:.0f}")
    predicted = [r for batch in results.values() for r in batch if r.get("result")]
    assert len(predicted) == BATCHES * BATCH_SIZE  # every task predicted
    assert llm.max_in_flight <= CONCURRENCY
    assert llm.max_in_flight == CONCURRENCY  # and the shared limit is used in full
    assert elapsed <= 1.4 * ideal
    assert all(total == llm.chat_calls for total in totals)  # every scrape of the two adds up
    assert all(s <= llm.chat_calls for s in scrapes)
    assert all(p > 0 for p in per_replica)  # both replicas did part of the work


def live_slots(redis_url: str, key: str) -> int:
    """Leases in the shared semaphore that have not ended (by Redis' clock)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    seconds, micros = r.time()
    return r.zcount(f"{key}:slots", seconds * 1000 + micros // 1000, "+inf")


def test_a_gunicorn_worker_killed_while_holding_a_slot_frees_it_within_its_lease(
    redis_db: str, llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    from my_ml_backend.llm.limits import limits_key

    lease = 2.0
    llm.set_default(fake.chat('{"sentiment": "正面"}', delay=4 * lease))  # the request outlives its worker
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "REDIS_URL": redis_db,
           "LLM_CONCURRENCY": "2", "LLM_SLOT_LEASE": str(lease), "LLM_TIMEOUT": "120"}
    replica = Replica(env, tmp_path / "replica")
    key = limits_key(llm.base_url, TEST_KEY)
    try:
        tasks = [{"id": 1, "data": {"text": "占着名额"}}]
        before = llm.in_flight
        threading.Thread(target=lambda: _ignore_errors(replica.predict, tasks), daemon=True).start()
        deadline = time.monotonic() + 30
        while llm.in_flight <= before:
            assert time.monotonic() < deadline, "no request reached the server"
            time.sleep(0.05)
        time.sleep(lease)  # held past one lease: the worker renews it
        assert live_slots(redis_db, key) == 1
        workers = children(replica.proc.pid)
        assert len(workers) == 2
        for pid in workers:  # whichever of the two holds the slot
            os.kill(pid, 9)
        killed = time.monotonic()
        while live_slots(redis_db, key) > 0:
            assert time.monotonic() - killed < 3 * lease, "the slot never came back"
            time.sleep(0.05)
        back_after = time.monotonic() - killed
    finally:
        replica.stop()
    print(f"\nslot of a kill -9'd gunicorn worker back after {back_after:.2f} s (lease {lease} s)")
    assert back_after <= lease + 0.2


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (gunicorn's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _ignore_errors(fn, *args) -> None:  # noqa: ANN001 - the killed worker's request fails, as expected
    try:
        fn(*args)
    except OSError:
        pass
