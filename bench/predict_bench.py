#!/usr/bin/env python3
"""Throughput benchmark: one Label Studio-shaped /predict batch against a slow LLM.

Starts the local OpenAI-compatible test server with a fixed latency and our backend
(a real process, as users run it), sends the batch Label Studio would send for
"Retrieve predictions", and prints side by side:
- the baseline of today's peers: one call per task, one after another;
- ours at several LLM_CONCURRENCY levels, against the ideal ceil(N/C) x latency;
- a rerun of the same batch (served by the response cache);
- a 429 storm with Retry-After (no task may be lost);
- calls per task, backend overhead per task (latency 0), peak memory of the server.

Usage: .venv/bin/python bench/predict_bench.py [--tasks 200] [--latency 1] [--concurrency 1 4 16]
This prints figures; it asserts nothing (speed targets are not unit tests).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from tests.conftest import TEST_KEY, Backend  # noqa: E402
from tests.fake_llm import server as fake  # noqa: E402

CONFIG = (ROOT / "examples" / "configs" / "text_classification.xml").read_text(encoding="utf-8")
ANSWER = fake.chat(json.dumps({"sentiment": "正面", "_confidence": 0.9}, ensure_ascii=False))


@dataclass
class Row:
    name: str
    seconds: float
    stored: int
    calls: int
    ideal: float | None = None
    note: str = ""


def tasks(n: int, salt: str = "") -> list[dict]:
    text = "条评论：物流很快，包装完好，质量不错。"
    return [{"id": i + 1, "data": {"text": f"{salt}第 {i + 1} {text}"}} for i in range(n)]


def baseline(llm: fake.FakeLLMServer, n: int) -> Row:
    """What a one-call-per-task, sequential backend does (openai client, no concurrency, no cache)."""
    client = openai.OpenAI(base_url=llm.base_url, api_key=TEST_KEY, max_retries=0)
    llm.reset()
    started = time.monotonic()
    for task in tasks(n, "baseline "):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": task["data"]["text"]}], temperature=0.1
        )
    return Row("baseline: sequential, 1 call/task", time.monotonic() - started, n, llm.chat_calls)


def run_batch(backend: Backend, llm: fake.FakeLLMServer, batch: list[dict]) -> tuple[float, int, int]:
    calls_before = llm.chat_calls
    started = time.monotonic()
    results = backend.predict(CONFIG, batch)
    seconds = time.monotonic() - started
    return seconds, sum(1 for r in results if "result" in r), llm.chat_calls - calls_before


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a process, from /proc (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_backend(llm: fake.FakeLLMServer, workdir: Path, **env: str) -> Backend:
    base = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_TIMEOUT": "30"}
    return Backend({**base, **env}, workdir)


def storm_responder(share: float, retry_after: float, seed: int = 7) -> Callable[[dict], fake.Reply]:
    """429 with Retry-After for a share of requests (seeded), else a valid answer."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def respond(_body: dict) -> fake.Reply:
        with lock:
            throttle = rng.random() < share
        return fake.throttled(retry_after) if throttle else ANSWER

    return respond


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--skip-baseline", action="store_true", help="the baseline alone takes N x latency")
    args = parser.parse_args()
    n, latency = args.tasks, args.latency
    rows: list[Row] = []
    memory: dict[str, float | None] = {}

    with fake.FakeLLMServer() as llm, tempfile.TemporaryDirectory() as tmp:
        llm.set_default(ANSWER)
        llm.latency = latency
        if not args.skip_baseline:
            rows.append(baseline(llm, n))
        for c in args.concurrency:
            llm.reset()
            llm.set_default(ANSWER)
            backend = start_backend(llm, Path(tmp) / f"c{c}", LLM_CONCURRENCY=str(c))
            try:
                batch = tasks(n, f"c{c} ")
                seconds, stored, calls = run_batch(backend, llm, batch)
                ideal = math.ceil(n / c) * latency
                note = "" if stored == n else f"deadline: {n - stored} left for the next retrieve"
                rows.append(Row(f"ours, LLM_CONCURRENCY={c}", seconds, stored, calls, ideal, note))
                seconds, stored, calls = run_batch(backend, llm, batch)
                rows.append(Row(f"ours, C={c}, same batch again", seconds, stored, calls, note="response cache"))
                memory[f"C={c}"] = peak_rss_mib(backend.proc.pid)
            finally:
                backend.stop()

        # 429 storm: 30 % of requests throttled with Retry-After: 1 s.
        c = max(args.concurrency)
        llm.reset()
        llm.set_responder(storm_responder(0.3, 1.0))
        backend = start_backend(llm, Path(tmp) / "storm", LLM_CONCURRENCY=str(c), LLM_MAX_RETRIES="6")
        try:
            seconds, stored, calls = run_batch(backend, llm, tasks(n, "storm "))
            rows.append(Row(f"429 storm (30 %, Retry-After 1 s), C={c}", seconds, stored, calls,
                            note=f"{n - stored} lost" if stored != n else "no task lost"))
        finally:
            backend.stop()

        # Backend overhead: latency 0, one call at a time.
        llm.reset()
        llm.set_responder(None)
        llm.set_default(ANSWER)
        llm.latency = 0
        backend = start_backend(llm, Path(tmp) / "overhead", LLM_CONCURRENCY="1", LLM_CACHE="off")
        try:
            run_batch(backend, llm, tasks(20, "warm "))
            seconds, stored, calls = run_batch(backend, llm, tasks(n, "overhead "))
            overhead_ms = seconds / n * 1000
        finally:
            backend.stop()

    print(f"\nN={n} tasks, LLM latency {latency:g} s, one /predict batch (Label Studio's shape)\n")
    header = f"| {'run':<42} | {'time (s)':>8} | {'ideal (s)':>9} | {'x ideal':>7} | {'stored':>6} | {'calls/task':>10}"
    print(header + " | note")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 11}|{'-' * 9}|{'-' * 8}|{'-' * 12}|------")
    for r in rows:
        ideal = f"{r.ideal:.1f}" if r.ideal else "-"
        ratio = f"{r.seconds / r.ideal:.2f}" if r.ideal else "-"
        print(f"| {r.name:<42} | {r.seconds:>8.2f} | {ideal:>9} | {ratio:>7} | {r.stored:>6} | "
              f"{r.calls / n:>10.2f} | {r.note}")
    print(f"\nbackend overhead per task (latency 0, C=1, fake LLM on loopback included): {overhead_ms:.1f} ms")
    print("peak RSS of the backend process: " + ", ".join(
        f"{k}: {v:.0f} MiB" if v else f"{k}: n/a" for k, v in memory.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
