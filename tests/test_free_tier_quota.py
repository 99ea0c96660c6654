"""Issue 14: the quota ledger and the model pool against a ModelScope-shaped local server.

The fake server plays ModelScope's free tier (daily caps per model and account, the
`modelscope-ratelimit-*` headers on every answer, 429 `errors` bodies, retired models,
`GET /v1/models`); the backend must learn all of it at run time and spend no call on a
model it knows to be out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.errors import ErrorKind, PredictionError
from my_ml_backend.llm.pool import MODEL_ANSWERS
from my_ml_backend.llm.quota import ACCOUNT, DayClock, QuotaLedger, account_id, open_ledger
from my_ml_backend.llm.quota_stores import RedisLedger
from my_ml_backend.settings import DEFAULT_MODEL, SERVED_MODELS_2026, Settings, load_settings
from my_ml_backend.telemetry.metrics import METRICS
from my_ml_backend.versioning import model_version
from tests.conftest import ROOT, TEST_KEY
from tests.fake_llm import server as fake

MESSAGES = [{"role": "user", "content": "hi"}]


def settings(llm: fake.FakeLLMServer, tmp_path: Path, **kw: object) -> Settings:
    params: dict = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "A", "timeout": 5.0,
                    "max_retries": 0, "data_dir": tmp_path, "cache_enabled": False}
    params.update(kw)
    return Settings(**params)


def persistent_client(s: Settings) -> LLMClient:
    return LLMClient(s, ledger=open_ledger(s))


# --------------------------------------------------------------------------- the fake itself


def test_fake_modelscope_caps_headers_and_errors_bodies(llm: fake.FakeLLMServer) -> None:
    quota = llm.modelscope(account_limit=5, model_limits={"A": 2}, retired={"R4": 404, "R0": 400})
    import openai

    client = openai.OpenAI(base_url=llm.base_url, api_key=TEST_KEY, max_retries=0)

    def ask(model: str):  # noqa: ANN202
        return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)

    first = ask("A")
    assert first.headers[fake.MODEL_REMAINING_HEADER] == "1" and first.headers[fake.MODEL_LIMIT_HEADER] == "2"
    assert first.headers[fake.ACCOUNT_REMAINING_HEADER] == "4" and first.headers[fake.ACCOUNT_LIMIT_HEADER] == "5"
    assert ask("A").headers[fake.MODEL_REMAINING_HEADER] == "0"
    with pytest.raises(openai.RateLimitError) as over:
        ask("A")
    assert "errors" in over.value.body or "quota" in str(over.value.body)
    assert over.value.response.headers[fake.MODEL_REMAINING_HEADER] == "0"  # a refusal carries them too
    with pytest.raises(openai.NotFoundError):
        ask("R4")
    with pytest.raises(openai.BadRequestError) as retired:
        ask("R0")
    assert "has no provider supported" in retired.value.response.text
    for _ in range(3):
        ask("B")  # the account's 5 calls: A, A, B, B, B (refusals count nothing)
    with pytest.raises(openai.RateLimitError) as account:
        ask("B")
    assert account.value.response.headers[fake.ACCOUNT_REMAINING_HEADER] == "0"
    assert quota.used == {"A": 2, "B": 3} and quota.refused == {"A": 1, "R4": 1, "R0": 1, "B": 1}
    models = [m.id for m in client.models.list()]
    assert "A" in models and "R4" not in models and "R0" not in models
    quota.new_day()
    assert ask("A").headers[fake.MODEL_REMAINING_HEADER] == "1"


# --------------------------------------------------------------------------- the quota day


def test_quota_day_starts_at_midnight_in_shanghai_by_default() -> None:
    clock = DayClock()
    # 15:59 UTC is 23:59 in Shanghai: still Dec 1; 16:00 UTC is midnight: Dec 2.
    assert clock.day(datetime(2026, 12, 1, 15, 59, tzinfo=UTC)) == "2026-12-01"
    assert clock.day(datetime(2026, 12, 1, 16, 0, tzinfo=UTC)) == "2026-12-02"
    hhmm, full = clock.describe_reset(datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    assert hhmm == "00:00" and full == "2026-12-02 00:00 Asia/Shanghai (16:00 UTC)"


def test_quota_day_boundary_is_configurable() -> None:
    clock = DayClock("08:30 UTC")
    assert clock.day(datetime(2026, 12, 1, 8, 29, tzinfo=UTC)) == "2026-11-30"
    assert clock.day(datetime(2026, 12, 1, 8, 30, tzinfo=UTC)) == "2026-12-01"
    assert clock.describe_reset(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))[0] == "08:30"
    assert load_settings({"LLM_QUOTA_RESET": "08:30 UTC"}).quota_reset == "08:30 UTC"
    with pytest.raises(ValueError, match="LLM_QUOTA_RESET"):
        DayClock("25:00")


# --------------------------------------------------------------------------- the pool


def test_pool_skips_used_up_and_retired_models_without_spending_calls(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    quota = llm.modelscope(account_limit=100, model_limits={"A": 3, "C": 50}, retired={"B": 404})
    client = persistent_client(settings(llm, tmp_path, fallback_models=("B", "C")))
    answered = [client.chat(MESSAGES).model for _ in range(8)]
    # A answers 3 times; its third answer says 0 left, so no call is wasted on a 429.
    # B is asked once (404: retired), then never again; C answers the rest.
    assert answered == ["A"] * 3 + ["C"] * 5
    assert quota.used == {"A": 3, "C": 5} and quota.refused == {"B": 1}
    asked = [r["body"]["model"] for r in llm.requests if r["method"] == "POST"]
    assert asked == ["A"] * 3 + ["B"] + ["C"] * 5
    status = {q.scope: q for q in client.pool.status()}
    assert (status["A"].remaining, status["B"].out, status["C"].remaining) == (0, "retired", 45)
    assert status[ACCOUNT].remaining == 92


def test_refusal_of_the_last_model_and_then_no_calls_at_all(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    quota = llm.modelscope(account_limit=2)
    client = persistent_client(settings(llm, tmp_path, fallback_models=("B",)))
    client.chat(MESSAGES)
    client.chat(MESSAGES)  # the account header now says 0 left: every model is out
    calls = llm.chat_calls
    for _ in range(3):
        with pytest.raises(PredictionError) as info:
            client.chat(MESSAGES)
        err = info.value
        assert err.kind == ErrorKind.QUOTA and err.fatal
        assert "今日额度已用完" in err.message and "将于 00:00 恢复" in err.message and "resets at" in err.message
    assert llm.chat_calls == calls == 2 and quota.refused == {}


def test_an_unannounced_quota_refusal_moves_to_the_next_model(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """A cap reached without a header (another tool spent it): one 429, then the next model."""
    llm.enqueue(fake.error(429, "You exceeded your current quota", key="errors"), fake.chat("from B"))
    client = persistent_client(settings(llm, tmp_path, fallback_models=("B",)))
    reply = client.chat(MESSAGES)
    assert (reply.text, reply.model) == ("from B", "B")
    assert [r["body"]["model"] for r in llm.requests] == ["A", "B"]
    assert client.pool.usable() == ["B"]


def test_all_models_retired_says_model_unavailable(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope(retired={"A": 400, "B": 404})
    client = persistent_client(settings(llm, tmp_path, fallback_models=("B",)))
    with pytest.raises(PredictionError) as info:
        client.chat(MESSAGES)
    assert info.value.kind == ErrorKind.MODEL_UNAVAILABLE and "A, B" in info.value.message
    assert llm.chat_calls == 2


def test_throttling_is_not_taken_for_a_used_up_quota(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.enqueue(fake.throttled(0.01), fake.chat("ok"))
    client = persistent_client(settings(llm, tmp_path, fallback_models=("B",), max_retries=1))
    assert client.chat(MESSAGES, deadline=None).model == "A"
    assert client.pool.usable() == ["A", "B"]


# --------------------------------------------------------------------------- the ledger's store


LEARN = """
import sys
from my_ml_backend.llm.quota import open_ledger
from my_ml_backend.settings import Settings
s = Settings(api_key=sys.argv[1], base_url=sys.argv[2], data_dir=sys.argv[3], model="A")
ledger = open_ledger(s)
ledger.observe("A", {"modelscope-ratelimit-model-requests-limit": "200",
                     "modelscope-ratelimit-model-requests-remaining": "0"})
ledger.mark_out("B", "retired")
"""


def test_ledger_is_shared_by_processes_and_survives_a_restart(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    s = settings(llm, tmp_path, fallback_models=("B", "C"))
    client = persistent_client(s)  # opened before the other process writes
    subprocess.run([sys.executable, "-c", LEARN, TEST_KEY, s.base_url, str(tmp_path)], cwd=ROOT, check=True)
    assert client.pool.usable() == ["C"]  # learnt by the other process, seen at once
    assert client.chat(MESSAGES).model == "C"
    assert [r["body"]["model"] for r in llm.requests] == ["C"]  # no call spent on A or B
    # a restart: a new process reads the same file
    read = ("import sys; from my_ml_backend.llm.quota import open_ledger; from my_ml_backend.settings import Settings;"
            "s = Settings(api_key=sys.argv[1], base_url=sys.argv[2], data_dir=sys.argv[3]);"
            "print(sorted((k, v.remaining, v.out) for k, v in open_ledger(s).today().items()))")
    out = subprocess.run([sys.executable, "-c", read, TEST_KEY, s.base_url, str(tmp_path)], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    assert "('A', 0, '')" in out and "('B', None, 'retired')" in out


def test_ledger_keeps_accounts_and_days_apart(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    s = settings(llm, tmp_path)
    ledger = open_ledger(s)
    ledger.mark_out("A", "quota")
    other = settings(llm, tmp_path, api_key="ms-other")
    assert account_id(s) != account_id(other) and open_ledger(other).today() == {}
    ledger.store.update(ledger.account, "2020-01-01", "B", 100, 0, "")  # an old day
    assert set(ledger.today()) == {"A"}
    assert set(ledger.store.read(ledger.account, "2020-01-01")) == {"B"}


def test_remaining_only_goes_down_within_a_day(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    ledger = open_ledger(settings(llm, tmp_path))
    ledger.observe("A", {"modelscope-ratelimit-model-requests-remaining": "10"})
    ledger.observe("A", {"modelscope-ratelimit-model-requests-remaining": "12"})  # a late, older answer
    assert ledger.today()["A"].remaining == 10


def test_redis_ledger_merges_like_sqlite(redis_url: str) -> None:
    store = RedisLedger(redis_url, prefix="test-quota:")
    ledger = QuotaLedger(store, DayClock(), "acct")
    ledger.clear()
    ledger.observe("A", {"modelscope-ratelimit-model-requests-limit": "200",
                         "modelscope-ratelimit-model-requests-remaining": "7"})
    ledger.observe("A", {"modelscope-ratelimit-model-requests-remaining": "9"})
    ledger.mark_out("B", "retired")
    ledger.mark_out("B", "quota")  # the first reason sticks
    again = QuotaLedger(RedisLedger(redis_url, prefix="test-quota:"), DayClock(), "acct")  # another replica
    today = again.today()
    assert (today["A"].limit, today["A"].remaining, today["B"].out) == (200, 7, "retired")
    ledger.clear()
    assert again.today() == {}


# --------------------------------------------------------------------------- configuration and reporting


def test_default_pool_on_modelscope_and_one_model_version(tmp_path: Path) -> None:
    s = load_settings({"MODELSCOPE_API_KEY": TEST_KEY})
    assert s.model == DEFAULT_MODEL and s.fallback_models == SERVED_MODELS_2026
    assert load_settings({"MODELSCOPE_API_URL": "http://127.0.0.1:8000/v1"}).fallback_models == ()
    assert load_settings({"MODELSCOPE_FALLBACK_MODELS": "none"}).fallback_models == ()
    custom = load_settings({"MODELSCOPE_MODEL": "X", "MODELSCOPE_FALLBACK_MODELS": "Y, X ,Z,Y"})
    assert custom.fallback_models == ("Y", "Z")
    versions = {model_version(s, "cfg") for _ in range(3)}
    assert len(versions) == 1  # one version for the pool, whichever model answers
    assert model_version(custom, "cfg") != model_version(load_settings({"MODELSCOPE_MODEL": "X"}), "cfg")


def test_metrics_show_answers_and_remaining_quota_per_model(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope(account_limit=50, model_limits={"metrics-A": 1, "metrics-B": 9})
    client = persistent_client(settings(llm, tmp_path, model="metrics-A", fallback_models=("metrics-B",)))
    before = METRICS.get(MODEL_ANSWERS, model="metrics-B")
    client.chat(MESSAGES)
    client.chat(MESSAGES)
    assert METRICS.get(MODEL_ANSWERS, model="metrics-B") == before + 1
    text = METRICS.render()
    assert 'ml_backend_quota_remaining{model="metrics-A"} 0' in text
    assert 'ml_backend_quota_remaining{model="metrics-B"} 8' in text
    assert 'ml_backend_quota_remaining{model="account"} 48' in text
    assert 'ml_backend_model_answers_total{model="metrics-A"}' in text


def test_backend_metrics_endpoint_lists_models(backend, llm: fake.FakeLLMServer) -> None:  # noqa: ANN001
    llm.modelscope(account_limit=1000, model_limits={fake.DEFAULT_MODEL: 300})
    cfg = (ROOT / "examples" / "configs" / "text_classification.xml").read_text(encoding="utf-8")
    llm.set_default(fake.chat('{"sentiment": "正面"}'))
    backend.predict(cfg, [{"id": 1, "data": {"text": "好"}}])
    with urllib.request.urlopen(backend.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert f'ml_backend_quota_remaining{{model="{fake.DEFAULT_MODEL}"}} 299' in text
    assert f'ml_backend_model_answers_total{{model="{fake.DEFAULT_MODEL}"}}' in text
    backend.forget_quota()


def test_check_env_lists_pool_models_and_reported_quota(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    served = "Qwen/Qwen3-30B-A3B-Instruct-2507"
    llm.modelscope(account_limit=2000, model_limits={served: 200}, retired={fake.DEFAULT_MODEL: 400})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE_", "LLM_", "REDIS_"))}
    env.update(MODELSCOPE_API_KEY=TEST_KEY, MODELSCOPE_API_URL=llm.base_url, DATA_DIR=str(tmp_path),
               MODELSCOPE_FALLBACK_MODELS=f"{served},ZhipuAI/GLM-4.6")
    s = load_settings(env)
    persistent_client(s).chat(MESSAGES)  # the retired default refuses, the next model answers
    out = subprocess.run([sys.executable, "check_modelscope_env.py"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    assert f"{fake.DEFAULT_MODEL}: 端点未列出 (not listed); 今日已停用 (out for today: retired)" in out
    assert f"{served}: 端点已列出 (listed); 今日剩余 (left today) 199/200" in out
    assert "ZhipuAI/GLM-4.6: 端点未列出 (not listed); 今日尚无记录" in out
    assert "账号今日剩余 (account, left today): 1999/2000" in out
    assert TEST_KEY not in out


def test_an_answer_that_arrives_after_the_quota_reset_does_not_close_the_new_day() -> None:
    """Sent at 23:59:58 and answered at 00:00:01 with "remaining: 0": that 0 was the old day's. Booked to the new
    day, it used to refuse every call of the day without asking the endpoint."""
    from my_ml_backend.llm.quota import MemoryLedger

    ledger = QuotaLedger(MemoryLedger(), DayClock("00:00 Asia/Shanghai"), "acct")
    today = ledger.clock.day()
    out = {"modelscope-ratelimit-requests-remaining": "0", "modelscope-ratelimit-model-requests-remaining": "0"}
    ledger.observe("A", out, sent_day="2000-01-01")
    ledger.mark_out(ACCOUNT, "quota", sent_day="2000-01-01")
    assert ledger.today() == {}
    ledger.observe("A", {"modelscope-ratelimit-model-requests-remaining": "12"}, sent_day=today)
    assert ledger.today()["A"].remaining == 12  # sent and answered today: booked as before
