#!/usr/bin/env python3
"""Scale benchmark: several gunicorn replicas against one slow endpoint, with and without a shared Redis.

Starts a redis-server, the local OpenAI-compatible test server with a fixed latency,
and REPLICAS backends, each `gunicorn -c gunicorn.conf.py --workers WORKERS` (as
scripts/start.sh runs it). Then sends 20-task /predict batches, eight at a time, at
1x, 10x and 100x the load of the issue's acceptance run (8 batches), and prints for
each mode side by side:
- per process (no REDIS_URL, as before): every worker has its own LLM_CONCURRENCY;
- shared (REDIS_URL): one LLM_CONCURRENCY for every worker of every replica;
the most requests the endpoint saw at once, time against the ideal ceil(N/C) x latency,
tasks predicted, and whether the replicas' /metrics scrapes add up to what the server
received.

Usage: .venv/bin/python bench/scale_bench.py [--latency 0.5] [--loads 1 10 100] [--concurrency 4]
This prints figures; it asserts nothing (speed targets are not unit tests).
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.conftest import TEST_KEY, free_port  # noqa: E402
from tests.fake_llm import server as fake  # noqa: E402
from tests.test_scale import BATCH_SIZE, Replica  # noqa: E402

AT_ONCE = 8  # batches in flight at a time (Label Studio users pressing "Retrieve predictions")


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def run(replicas: list[Replica], llm: fake.FakeLLMServer, batches: int, salt: str) -> tuple[float, int]:
    """Send `batches` batches, AT_ONCE at a time, spread over the replicas; (seconds, tasks predicted)."""
    predicted = 0
    lock = threading.Lock()
    next_batch = iter(range(batches))

    def worker() -> None:
        nonlocal predicted
        for b in next_batch:
            tasks = [{"id": i, "data": {"text": f"{salt} 批次 {b} 任务 {i}"}} for i in range(BATCH_SIZE)]
            results = replicas[b % len(replicas)].predict(tasks)
            with lock:
                predicted += sum(1 for r in results if r.get("result"))

    threads = [threading.Thread(target=worker) for _ in range(AT_ONCE)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started, predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--loads", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="(fixed at 2 by tests.test_scale.Replica)")
    parser.add_argument("--modes", nargs="+", default=["per-process", "shared"], choices=["per-process", "shared"])
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    redis_proc, redis_url = start_redis(tmp)
    print(f"# Scale benchmark: {args.replicas} replicas x 2 gunicorn workers, LLM_CONCURRENCY={args.concurrency}, "
          f"latency {args.latency} s, {BATCH_SIZE}-task batches, {AT_ONCE} at a time\n")
    print("| mode | load | tasks | predicted | server max in flight | time (s) | ideal (s) | ratio | requests | "
          "scrapes sum |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        with fake.FakeLLMServer() as llm:
            llm.latency = args.latency
            llm.set_default(fake.chat('{"sentiment": "正面"}'))
            for mode in args.modes:
                env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_TIMEOUT": "30",
                       "LLM_CONCURRENCY": str(args.concurrency), "LLM_CACHE": "off"}
                if mode == "shared":
                    env["REDIS_URL"] = redis_url
                replicas = [Replica(env, tmp / f"{mode}-{i}") for i in range(args.replicas)]
                try:
                    for load in args.loads:
                        llm.reset()
                        llm.set_default(fake.chat('{"sentiment": "正面"}'))
                        before = sum(r.scrape()["ml_backend_api_requests_total"] for r in replicas)
                        batches = AT_ONCE * load
                        seconds, predicted = run(replicas, llm, batches, f"{mode}{load}")
                        scraped = sum(r.scrape()["ml_backend_api_requests_total"] for r in replicas) - before
                        n = batches * BATCH_SIZE
                        ideal = math.ceil(n / args.concurrency) * args.latency
                        print(f"| {mode} | {load}x | {n} | {predicted} | {llm.max_in_flight} | {seconds:.1f} | "
                              f"{ideal:.1f} | {seconds / ideal:.2f} | {llm.chat_calls} | {scraped:.0f} |", flush=True)
                finally:
                    for r in replicas:
                        r.stop()
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
