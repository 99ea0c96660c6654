"""The status page at `/` and the activity registry it reads; readable UTF-8 JSON replies."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from my_ml_backend.settings import load_settings
from my_ml_backend.telemetry.activity import Activity
from tests.conftest import TEST_KEY, Backend, config
from tests.fake_llm import server as fake

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser sends


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def test_activity_counts_a_batch_its_errors_and_the_quota() -> None:
    activity = Activity()
    batch = activity.start_batch("7", 3, 90)
    activity.task_done(batch, True)
    snap = activity.snapshot()
    assert [(b.project, b.done, b.total) for b in snap.running] == [("7", 1, 3)]
    activity.task_done(batch, False)
    activity.error("quota", "❌ API调用配额已用完")
    activity.error("quota", "❌ API调用配额已用完")
    activity.model_answered("Qwen/Qwen3-8B", 41)
    activity.finish_batch(batch, succeeded=1, calls=4, cache_hits=1, tokens=120)
    snap = activity.snapshot()
    assert snap.running == [] and not snap.shared and "pid" in snap.where
    [done] = snap.finished
    assert (done.total, done.succeeded, done.failed, done.calls, done.cache_hits, done.tokens) == (3, 1, 2, 4, 1, 120)
    assert [(e.kind, e.count) for e in snap.errors] == [("quota", 2)]
    assert [(m.model, m.quota_remaining) for m in snap.models] == [("Qwen/Qwen3-8B", 41)]


def test_activity_is_shared_through_redis(redis_db: str) -> None:
    """Two processes (two registries) with one REDIS_URL see each other's batches and errors."""
    settings = load_settings({"REDIS_URL": redis_db})
    worker_a, worker_b = Activity(), Activity()
    worker_a.configure(settings)
    worker_b.configure(settings)
    batch = worker_a.start_batch("3", 5, 90)
    worker_a.task_done(batch, True)
    snap = worker_b.snapshot()
    assert snap.shared and "Redis" in snap.where and "@" not in snap.where
    assert [(b.project, b.done, b.total) for b in snap.running] == [("3", 1, 5)]
    worker_a.error("auth", "❌ API认证失败")
    worker_a.finish_batch(batch, succeeded=1, calls=1, cache_hits=0, tokens=10)
    snap = worker_b.snapshot()
    assert snap.running == [] and [b.succeeded for b in snap.finished] == [1]
    assert [(e.kind, e.count, e.message) for e in snap.errors] == [("auth", 1, "❌ API认证失败")]


def test_activity_survives_a_redis_outage() -> None:
    """Nothing listens on port 1: reports still reach memory and the page says Redis is unavailable."""
    activity = Activity()
    activity.configure(load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    batch = activity.start_batch("1", 2, 90)
    activity.task_done(batch, True)
    snap = activity.snapshot()
    assert "Redis" in snap.where and [b.done for b in snap.running] == [1]


def test_page_shows_a_batch_masked_settings_and_links(backend: Backend, llm: fake.FakeLLMServer) -> None:
    headers = {"modelscope-ratelimit-requests-remaining": "1234"}
    llm.set_responder(lambda _req: fake.chat('{"sentiment": "正面"}', headers=headers))
    backend.predict(config("text_classification"), [{"id": i, "data": {"text": f"好评 {i}"}} for i in range(3)],
                    project="42.1700000000")
    status, content_type, body = fetch(backend.url + "/", HTML)
    page = body.decode("utf-8")
    assert status == 200 and content_type.startswith("text/html")
    assert "进行中的批次 (batches in progress)" in page and "最近的批次 (last batches)" in page
    assert 'href="/metrics"' in page and 'href="/health"' in page
    assert TEST_KEY not in page and f"{TEST_KEY[:4]}…{TEST_KEY[-4:]}" in page
    assert "仅本进程" in page and "REDIS_URL" in page  # says the view is per process
    # The last batch: project 42, 3 tasks, 3 succeeded, 0 failed, 3 calls; the quota from the reply headers.
    assert re.search(r"<td>42</td><td>3</td><td>3</td><td>0</td><td>3</td>", page), page
    assert "<td>1234</td>" in page
    # Anything not asking for HTML (curl, Label Studio) still gets the stock health JSON.
    status, content_type, body = fetch(backend.url + "/")
    assert status == 200 and content_type.startswith("application/json") and b'"status":"UP"' in body.replace(
        b" ", b""
    )


def test_page_shows_errors_by_kind_with_their_message(keyless_backend: Backend) -> None:
    keyless_backend.predict(config("text_classification"), [{"id": 1, "data": {"text": "差评"}}])
    page = fetch(keyless_backend.url + "/", HTML)[2].decode("utf-8")
    assert "<td>missing_key</td>" in page and "API Key未设置" in page


def test_json_replies_are_readable_utf8(keyless_backend: Backend) -> None:
    """A curl user reads "API Key未设置", not "\\u672a\\u8bbe\\u7f6e"; 400s and 200s alike."""
    cfg = config("text_classification")
    payload = {"tasks": [{"id": 1, "data": {"text": "t"}}], "project": "1.1", "label_config": cfg}
    for body, expected_status, expected_text in [
        (json.dumps(payload).encode(), 200, "API Key未设置"),
        (b"not json", 400, "请求体"),
    ]:
        req = urllib.request.Request(keyless_backend.url + "/predict", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        assert status == expected_status and expected_text.encode() in raw and b"\\u" not in raw, raw


def test_page_needs_basic_auth_when_set(llm_server: fake.FakeLLMServer, tmp_path: Path) -> None:
    env = {"MODELSCOPE_API_URL": llm_server.base_url, "BASIC_AUTH_USER": "ann", "BASIC_AUTH_PASS": "s3cret-pass"}
    b = Backend(env, tmp_path)
    try:
        status, _, body = fetch(b.url + "/", HTML)
        assert status == 401 and b"s3cret" not in body
        token = "Basic YW5uOnMzY3JldC1wYXNz"  # base64("ann:s3cret-pass")
        status, _, body = fetch(b.url + "/", {**HTML, "Authorization": token})
        assert status == 200 and "s3cret-pass" not in body.decode("utf-8") and "<td>ann</td>" in body.decode()
    finally:
        b.stop()


def test_progress_moves_while_a_batch_runs(backend: Backend, llm: fake.FakeLLMServer) -> None:
    """Server side of the live view: two loads during one batch show more tasks done."""
    llm.latency = 0.25
    llm.set_responder(lambda _req: fake.chat('{"sentiment": "中性"}'))
    tasks = [{"id": i, "data": {"text": f"一般 {i}"}} for i in range(12)]
    runner = threading.Thread(target=backend.predict, args=(config("text_classification"), tasks))
    runner.start()
    seen = []
    try:
        while runner.is_alive():
            page = fetch(backend.url + "/", HTML)[2].decode("utf-8")
            if m := re.search(r'class="done">(\d+)</span> / <span class="total">12<', page):
                seen.append(int(m.group(1)))
            time.sleep(0.4)
    finally:
        runner.join()
    assert len(set(seen)) >= 2 and seen == sorted(seen), seen


@pytest.mark.parametrize("accept", ["application/json", "*/*", ""])
def test_root_without_html_stays_json(keyless_backend: Backend, accept: str) -> None:
    status, content_type, _ = fetch(keyless_backend.url + "/", {"Accept": accept} if accept else {})
    assert status == 200 and content_type.startswith("application/json")


def test_page_shows_the_pool_with_todays_quota_from_the_ledger(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """Models in pool order with the ledger's quota: a retired one, a used-up one, the one answering; the account."""
    llm.modelscope(account_limit=100, model_limits={"A": 2, "C": 50}, retired={"B": 404})
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "MODELSCOPE_MODEL": "A",
           "MODELSCOPE_FALLBACK_MODELS": "B,C", "LLM_CACHE": "off"}
    b = Backend(env, tmp_path)
    try:
        llm.set_default(fake.chat('{"sentiment": "正面"}'))
        b.predict(config("text_classification"), [{"id": i, "data": {"text": f"好评 {i}"}} for i in range(4)])
        status, _, body = fetch(b.url + "/", HTML)
    finally:
        b.stop()
    page = body.decode("utf-8")
    assert status == 200
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>[^<]*</td><td>([^<]*)</td></tr>", page)
    models = {name: (role, quota) for name, role, quota in rows}
    assert [name for name, *_ in rows[:3]] == ["A", "B", "C"]  # the order the pool tries them
    assert models["A"][1].startswith("0") and "used up" in models["A"][1]
    assert "retired" in models["B"][1] and "fallback" in models["B"][0]
    assert models["C"][1] == "48 / 50" and "answered last" in models["C"][0]
    assert models["账号 (account)"][1] == "96 / 100"


def test_page_shows_each_projects_few_shot_choice_and_its_accuracy(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """The auto choice kept in the example store (what an evaluation found) is shown per project."""
    from my_ml_backend.labeling.schema import config_hash
    from my_ml_backend.learning.autotune import FewShotEvaluation, meta_key
    from my_ml_backend.learning.store import open_example_store

    cfg = config("text_classification")
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url}
    b = Backend(env, tmp_path)
    try:
        store = open_example_store(load_settings({**env, "DATA_DIR": str(b.data_dir)}))
        assert store is not None
        fitted = {"a": 1.2, "b": -1.0, "n": 15, "right": 9, "version": "v"}
        accuracy = {"0": 0.7, "labels-1": 0.85}
        choice = FewShotEvaluation(form="labels-1", samples=20, calls=40, accuracy=accuracy, score_map=fitted,
                                   strategy="structured", strategy_accuracy={"structured": 0.8, "free-text": 0.6},
                                   strategy_samples=20)
        store.set_meta("7", meta_key(config_hash(cfg)), choice.dumps())
        b.setup(cfg, project="7.1700000000")
        b.setup(cfg, project="8.1700000000")  # never evaluated
        _, _, body = fetch(b.url + "/", HTML)
    finally:
        b.stop()
    page = body.decode("utf-8")
    assert re.search(r"<td>7</td><td>[^<]*</td><td>structured（准确率 accuracy: structured 80%, free-text 60%; "
                     r"20 个标注任务 annotated tasks）</td><td>labels-1（准确率 accuracy 85%）；分数按 15 条标注校准 "
                     r"\(score fitted on 15 tasks\)</td>", page), page
    assert re.search(r"<td>8</td><td>[^<]*</td><td>auto：尚未评估，JSON[^<]*</td><td>auto：尚未评估", page), page
