"""Adaptive pacing: fewer requests at once under 429s, back up afterwards, nothing past the deadline."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.pacing import AdaptiveLimiter
from my_ml_backend.settings import Settings
from tests.conftest import TEST_KEY, Backend, config
from tests.fake_llm import server as fake

CFG = config("text_classification")


def outcome(limiter: AdaptiveLimiter, **kw: Any) -> None:
    assert limiter.acquire(deadline=time.monotonic() + 1)
    limiter.release(time.monotonic(), **{"success": False, **kw})


def test_limiter_halves_on_repeated_429s_once_per_episode_and_grows_back() -> None:
    limiter = AdaptiveLimiter(8)
    slots = [time.monotonic() for _ in range(8) if limiter.acquire()]
    assert len(slots) == 8 and not limiter.acquire(deadline=time.monotonic() + 0.05)  # full: waits, then gives up
    for started in slots:  # eight 429s to requests sent together: one cut (at the 4th), not several
        limiter.release(started, success=False, throttled=True)
    assert limiter.limit == 4
    for kw in ({"throttled": True}, {"success": True}, {"throttled": True}):
        outcome(limiter, **kw)
    assert limiter.limit == 4  # stray 429s between successes: a busy endpoint, not a saturated one
    outcome(limiter, throttled=True)  # two in a row at limit 4: half a round refused
    assert limiter.limit == 2
    outcome(limiter, throttled=True)
    outcome(limiter, throttled=True)
    assert limiter.limit == 1
    successes = 0
    while limiter.limit < 8:
        outcome(limiter, success=True)
        successes += 1
    assert successes == sum(range(1, 8))  # +1 per round of `limit` successes


def test_retry_after_pauses_every_worker(llm: fake.FakeLLMServer) -> None:
    limiter = AdaptiveLimiter(4)
    outcome(limiter, throttled=True)
    outcome(limiter, throttled=True, pause=0.3)
    started = time.monotonic()
    assert limiter.acquire()
    assert time.monotonic() - started >= 0.28
    assert not AdaptiveLimiter(1).acquire(deadline=time.monotonic() - 1)  # deadline already passed


class ConcurrencyProbe:
    """A responder that throttles for `storm` seconds, then answers after `latency`.

    The first `wave` requests are held until all of them are in (or `hold` seconds
    passed), and the storm is timed from their answer: so what the endpoint sees does
    not depend on how fast a loaded machine starts the client's threads. It records,
    for every request, when it arrived and ended and how many requests were in flight
    at the server when it arrived: concurrency as the endpoint saw it.
    """

    def __init__(self, storm: float, retry_after: float, latency: float, wave: int, hold: float = 3.0) -> None:
        self.storm, self.retry_after, self.latency = storm, retry_after, latency
        self.wave, self.hold = wave, hold
        self.first: float | None = None
        self.storm_from: float | None = None
        self.arrived = 0
        self.active = 0
        self.log: list[tuple[float, float, int, int]] = []  # (start, end, in flight at start, status)
        self._lock = threading.Condition()

    def __call__(self, body: dict) -> fake.Reply:
        with self._lock:
            now = time.monotonic()
            self.first = self.first if self.first is not None else now
            self.active += 1
            self.arrived += 1
            in_flight = self.active
            if self.arrived <= self.wave:
                self._lock.notify_all()
                self._lock.wait_for(lambda: self.arrived >= self.wave, timeout=self.hold)
                self.storm_from = self.storm_from or time.monotonic()
            storming = self.storm_from is None or time.monotonic() - self.storm_from < self.storm
        time.sleep(0.02 if storming else self.latency)
        with self._lock:
            self.active -= 1
            self.log.append((now - self.first, time.monotonic() - self.first, in_flight, 429 if storming else 200))
        return fake.throttled(self.retry_after) if storming else fake.chat('{"sentiment": "正面"}')

    def in_flight(self, status: int) -> list[int]:
        """Requests in flight at the arrival of each request answered with `status`, in order of arrival."""
        return [n for _, _, n, st in sorted(self.log) if st == status]


def test_throttle_storm_slows_down_recovers_and_loses_no_task(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    probe = ConcurrencyProbe(storm=0.85, retry_after=0.3, latency=0.1, wave=8)
    llm.set_responder(probe)
    env = {
        "MODELSCOPE_API_KEY": TEST_KEY,
        "MODELSCOPE_API_URL": llm.base_url,
        "LLM_CONCURRENCY": "8",
        "LLM_MAX_RETRIES": "2",  # a storm is longer than two retries: 429s are retried until the deadline
        "ML_TIMEOUT_PREDICT": "20",  # deadline 10 s
    }
    tasks = [{"id": i, "data": {"text": f"好评 {i}"}} for i in range(60)]
    b = Backend(env, tmp_path)
    try:
        started = time.monotonic()
        preds = b.predict(CFG, tasks)
        elapsed = time.monotonic() - started
    finally:
        b.stop()
    assert all(p.get("result") for p in preds), [p.get("error") for p in preds if not p.get("result")]
    assert elapsed < 10
    refused, answered = probe.in_flight(429), probe.in_flight(200)
    assert len(answered) == 60  # each task answered once
    assert max(refused[:8]) >= 6  # the storm met the full concurrency first
    # ... which then dropped: 8 -> 4 after the first wave, -> 2 after two refusals more. At most 13 refusals
    # (the first wave; then 4, and 1 more in the slot the first refusal at 4 frees) come before the limit is
    # down to 2, whatever the machine's speed.
    assert max(refused[13:], default=0) <= 2
    assert max(answered[:2]) <= 2  # the recovery started low: the storm did bring the limit down to 2 or 1
    assert max(answered[20:]) >= 5  # then came back up (+1 a round: a limit of 6 after 1+2+3+4+5 answers)
    # Halving per episode and an endpoint-wide Retry-After pause: waves at least 0.32 s apart, so three at most in
    # the storm, 8 + (4+1) + (2+1) = 16 refusals, where eight workers each retrying on their own would collect
    # about 8 per 0.3 s of storm. A slower machine spaces the waves more: fewer refusals, never more.
    assert len(refused) <= 17
    logs = b.logs()
    assert "endpoint keeps throttling: concurrency 8 -> 4" in logs
    assert "60 成功, 0 失败" in logs


def test_no_retry_past_the_deadline(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """Retry-After 2 s, deadline 3 s: one retry fits, the next would not; the batch ends at the deadline."""
    llm.set_default(fake.throttled(2))
    env = {
        "MODELSCOPE_API_KEY": TEST_KEY,
        "MODELSCOPE_API_URL": llm.base_url,
        "LLM_CONCURRENCY": "2",
        "ML_TIMEOUT_PREDICT": "13",
    }
    b = Backend(env, tmp_path)
    try:
        started = time.time()
        preds = b.predict(CFG, [{"id": i, "data": {"text": f"好 {i}"}} for i in range(4)])
        elapsed = time.time() - started
        time.sleep(2.5)  # nothing may still be trying in the background (a next retry would come at 4 s)
    finally:
        b.stop()
    assert 2.0 < elapsed < 4.0  # waited as asked, and ended at the deadline, not at a retry after it
    assert all("result" not in p for p in preds)
    times = sorted(r["time"] for r in llm.requests)
    # The batch started before its first request, so its deadline is at most 3 s after that request.
    assert times[-1] < times[0] + 3.0
    assert llm.chat_calls <= 4  # two at t=0, then one at a time after the pause


def test_client_without_deadline_keeps_the_retry_budget(llm: fake.FakeLLMServer) -> None:
    llm.set_default(fake.throttled(0.05))
    c = LLMClient(Settings(api_key=TEST_KEY, base_url=llm.base_url, max_retries=2))
    try:
        c.chat([{"role": "user", "content": "hi"}])
    except Exception as exc:  # noqa: BLE001
        assert "限流" in str(exc)
    assert llm.chat_calls == 3


def test_refusal_sent_as_a_500_is_not_retried(llm: fake.FakeLLMServer) -> None:
    """llama-cpp-python refuses json_schema with a 500: step down at once, do not pay for it twice more."""
    llm.enqueue(fake.error(500, "Input validation error: response_format.type json_schema not supported"))
    llm.enqueue(fake.chat('{"a": "ok"}'))
    c = LLMClient(Settings(api_key=TEST_KEY, base_url=llm.base_url, max_retries=2))
    assert c.chat([{"role": "user", "content": "hi"}], {"type": "object"}).text == '{"a": "ok"}'
    assert llm.chat_calls == 2
    llm.enqueue(fake.server_error(502), fake.chat("ok"))
    assert c.chat([{"role": "user", "content": "again"}]).text == "ok" and llm.chat_calls == 4  # an outage is retried
