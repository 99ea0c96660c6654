"""`/metrics`: Prometheus text format, and values that match what the fake server saw."""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request
from pathlib import Path

from my_ml_backend.telemetry.metrics import Metrics
from tests.conftest import TEST_KEY, Backend, config
from tests.fake_llm import server as fake

CFG = config("text_classification")
USAGE = {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}

# Prometheus text exposition 0.0.4: comments, or `name{label="value",...} number`.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$')
_COMMENT = re.compile(r"^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge))$")


def scrape(backend: Backend, auth: tuple[str, str] | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(backend.url + "/metrics")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def parse(text: str) -> dict[str, float]:
    """Samples by `name{labels}`, checking every line against the format and TYPE before samples."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert _COMMENT.match(line), line
            if line.startswith("# TYPE"):
                typed.add(line.split()[2])
            continue
        match = _SAMPLE.match(line)
        assert match, line
        assert match.group(1) in typed, f"sample before its TYPE: {line}"
        series = line.rsplit(" ", 1)[0]
        assert series not in samples, f"duplicate series {series}"
        samples[series] = float(match.group(4))
    return samples


def test_render_escapes_labels_and_formats_numbers() -> None:
    m = Metrics()
    m.inc("errors", kind='a "quoted"\\kind\n')
    m.inc("prompt_tokens", 2.5)
    m.gauge("thing", "A gauge.", lambda: [((("model", "Qwen/X"),), 3)])
    samples = parse(m.render())
    assert samples['ml_backend_errors_total{kind="a \\"quoted\\"\\\\kind\\n"}'] == 1
    assert samples["ml_backend_prompt_tokens_total"] == 2.5
    assert samples["ml_backend_cache_hits_total"] == 0  # every counter is present from the start
    assert samples['ml_backend_thing{model="Qwen/X"}'] == 3


def test_metrics_count_what_the_endpoint_saw(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_MAX_RETRIES": "2"}
    llm.enqueue(fake.throttled(0.1))  # the first call is retried once
    llm.set_default(fake.chat('{"sentiment": "正面"}', usage=USAGE))
    tasks = [{"id": i, "data": {"text": f"好 {i}"}} for i in range(3)] + [{"id": 9, "data": {"other": "x"}}]
    b = Backend(env, tmp_path)
    try:
        status, content_type, text = scrape(b)
        assert status == 200 and content_type.startswith("text/plain") and "version=0.0.4" in content_type
        assert parse(text)["ml_backend_api_requests_total"] == 0
        b.predict(CFG, tasks)
        b.predict(CFG, tasks)  # all from the cache
        samples = parse(scrape(b)[2])
    finally:
        b.stop()
    assert llm.chat_calls == 4
    assert samples["ml_backend_api_requests_total"] == llm.chat_calls
    assert samples["ml_backend_api_retries_total"] == 1
    assert samples["ml_backend_api_throttled_total"] == 1
    assert samples["ml_backend_cache_misses_total"] == 3
    assert samples["ml_backend_cache_hits_total"] == 3
    assert samples["ml_backend_prompt_tokens_total"] == 300  # three answers paid, the hits cost nothing
    assert samples["ml_backend_completion_tokens_total"] == 21
    assert samples["ml_backend_tasks_total"] == 8 and samples["ml_backend_batches_total"] == 2
    assert samples['ml_backend_errors_total{kind="no_text"}'] == 2
    assert samples['ml_backend_concurrency_limit{model="Qwen/Qwen3-Coder-480B-A35B-Instruct"}'] == 1
    assert any(k.startswith("ml_backend_process_info{pid=") for k in samples)
    logs = b.logs()
    assert "缓存命中 0/未命中 3 (cache hits/misses), API 请求 4 (requests), 重试 1 (retries), 429 × 1" in logs
    assert "tokens 300+21" in logs
    assert "缓存命中 3/未命中 0 (cache hits/misses), API 请求 0 (requests)" in logs


def test_basic_auth_covers_metrics(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    b = Backend({"MODELSCOPE_API_URL": llm.base_url, "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"}, tmp_path)
    try:
        assert scrape(b)[0] == 401
        assert scrape(b, ("u", "wrong"))[0] == 401
        status, _, text = scrape(b, ("u", "p"))
        assert status == 200 and "ml_backend_api_requests_total 0" in text
    finally:
        b.stop()
