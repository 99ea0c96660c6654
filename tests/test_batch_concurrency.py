"""Concurrency within a batch, task order, and the deadline below Label Studio's 100 s."""

from __future__ import annotations

import time

from tests.conftest import TEST_KEY, Backend, config
from tests.fake_llm import server as fake

CFG = config("text_classification")


def echo_label(body: dict) -> fake.Reply:
    """Answers with the label named in the task text, so order mix-ups are visible."""
    prompt = body["messages"][-1]["content"]
    label = next(v for v in ("正面", "负面", "中性") if f"<<<\n{v}" in prompt)
    return fake.chat(f'{{"sentiment": "{label}"}}')


def test_concurrent_batch_keeps_task_order(llm: fake.FakeLLMServer, tmp_path) -> None:
    llm.set_responder(echo_label)
    llm.latency = 0.3
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CONCURRENCY": "4"}
    b = Backend(env, tmp_path)
    try:
        labels = ["正面", "负面", "中性"] * 4
        # Distinct texts: identical ones would be asked once (response cache).
        preds = b.predict(CFG, [{"id": i, "data": {"text": f"{label} #{i}"}} for i, label in enumerate(labels)])
    finally:
        b.stop()
    assert [p["result"][0]["value"]["choices"][0] for p in preds] == labels
    starts = sorted(r["time"] for r in llm.requests)
    # 12 calls at 0.3 s each with 4 in flight: the first four started together.
    assert starts[3] - starts[0] < 0.25


def test_deadline_returns_unfinished_tasks_promptly(llm: fake.FakeLLMServer, tmp_path) -> None:
    llm.set_default(fake.chat('{"sentiment": "正面"}'))
    llm.latency = 1.0  # 1 s of margin for the first task: a loaded machine must not make it miss the deadline
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "ML_TIMEOUT_PREDICT": "12"}
    b = Backend(env, tmp_path)  # deadline = 12 - 10 = 2 s, one call at a time: 5 tasks need 5 s
    try:
        started = time.monotonic()
        preds = b.predict(CFG, [{"id": i, "data": {"text": f"好 {i}"}} for i in range(5)])
        elapsed = time.monotonic() - started
    finally:
        b.stop()
    assert elapsed < 4.5
    assert preds[0]["result"]
    assert "时限" in preds[-1]["error"] and "result" not in preds[-1]
    assert len(preds) == 5
