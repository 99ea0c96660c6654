"""The review score without logprobs (LLM_SCORE): second opinions against a ModelScope-shaped fake server.

The extra calls go to the models and in the number the settings say, each draw is cached apart from the
task's own answer, the ledger and the dry run count them, scoring degrades when quota runs out (the
pre-label is kept), and LLM_MIN_SCORE withholds exactly the tasks under it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from my_ml_backend.jobs.estimate import estimate
from my_ml_backend.llm.client import LLMClient
from my_ml_backend.llm.quota import open_ledger
from my_ml_backend.predicting.factory import build_predictor, project_min_score
from my_ml_backend.predicting.score_activity import SCORE_ACTIVITY, SCORE_CALLS
from my_ml_backend.settings import Settings, load_settings
from my_ml_backend.telemetry.metrics import METRICS
from tests.conftest import TEST_KEY, config
from tests.fake_llm import server as fake
from tests.test_batch_free_tier import job, reviews

POSITIVE, NEGATIVE = "正面", "负面"


def chat_bodies(llm: fake.FakeLLMServer) -> list[dict]:
    return [r["body"] for r in llm.requests if str(r.get("path", "")).endswith("/chat/completions")]


def settings(llm: fake.FakeLLMServer, tmp_path: Path, **kw: object) -> Settings:
    params: dict = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "A", "timeout": 5.0, "max_retries": 0,
                    "data_dir": tmp_path, "fewshot_k": 0, "fewshot_auto": False, "logprobs": False,
                    "batch_deadline": 3600.0, "score_method": "agreement", "score_calls": 2,
                    "score_shares": False}  # the share weighing has its own tests (test_answer_shares)
    params.update(kw)
    return Settings(**params)


def opinions(flip_when: callable) -> callable:  # type: ignore[valid-type]
    """A responder: the first answer says what the text says (confidence 0.8); `flip_when(body)` draws disagree."""

    def respond(body: dict) -> fake.Reply:
        text = body["messages"][-1]["content"]
        label = POSITIVE if "好" in text else NEGATIVE
        if flip_when(body):
            label = NEGATIVE if label == POSITIVE else POSITIVE
        return fake.chat(json.dumps({"sentiment": label, "_confidence": 0.8}, ensure_ascii=False))

    return respond


def predictor(s: Settings):  # noqa: ANN201
    return build_predictor(config("text_classification"), s)


@pytest.fixture(autouse=True)
def _fresh_score_activity() -> None:
    SCORE_ACTIVITY.clear()


def test_agreement_asks_k_draws_of_the_same_model_at_temperature(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope(model_limits={"A": 500, "B": 500})
    # the second draw of task 1 disagrees; every draw of task 0 agrees
    llm.set_responder(opinions(lambda b: b["temperature"] > 0.5 and "评论1" in b["messages"][-1]["content"]
                               and sum(1 for r in chat_bodies(llm) if "评论1" in r["messages"][-1]["content"]) == 3))
    s = settings(llm, tmp_path, fallback_models=("B",))
    before = METRICS.get(SCORE_CALLS, method="agreement", model="A")
    items = predictor(s).predict_batch(reviews(2))
    bodies = chat_bodies(llm)
    assert len(bodies) == 6  # per task: its answer and LLM_SCORE_CALLS=2 draws
    assert [b["model"] for b in bodies] == ["A"] * 6
    assert sorted(b["temperature"] for b in bodies) == [0.1] * 2 + [0.7] * 4
    assert METRICS.get(SCORE_CALLS, method="agreement", model="A") - before == 4
    assert SCORE_ACTIVITY.snapshot().calls == {("agreement", "A"): 4}
    assert items[0]["result"][0]["value"]["choices"] == [POSITIVE]
    assert items[0]["score"] == pytest.approx((2 + 0.8) / 3, abs=1e-3)  # both draws agree; the answer votes 0.8
    assert items[1]["score"] == pytest.approx((1 + 0.8) / 3, abs=1e-3)  # one draw of two agrees
    assert items[0]["score"] > items[1]["score"]
    assert items[1]["result"][0]["value"]["choices"] == [NEGATIVE]  # no majority switch unless asked


def test_draws_are_cached_apart_from_the_task_answer(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope()
    llm.set_responder(opinions(lambda b: b["temperature"] > 0.5))  # every draw disagrees
    s = settings(llm, tmp_path, cache_enabled=True)
    first = predictor(s).predict_batch(reviews(1))
    assert llm.chat_calls == 3
    again = predictor(s).predict_batch(reviews(1))
    assert llm.chat_calls == 3  # the answer and both draws come from the cache, none in place of another
    assert [(i["score"], i["result"][0]["value"]) for i in first] == [(i["score"], i["result"][0]["value"])
                                                                      for i in again]
    assert first[0]["result"][0]["value"]["choices"] == [POSITIVE]  # 评论0 is 很好: the answer is not a draw's
    assert first[0]["score"] == pytest.approx(0.8 / 3, abs=1e-3)


def test_majority_switch_is_a_flag(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope()
    llm.set_responder(opinions(lambda b: b["temperature"] > 0.5))
    [item] = predictor(settings(llm, tmp_path, score_majority=True)).predict_batch(reviews(1))
    assert item["result"][0]["value"]["choices"] == [NEGATIVE]  # two draws of three outvote the first answer
    assert item["score"] == pytest.approx(2 / 3, abs=1e-3)


def test_models_asks_the_other_pool_models_with_spare_quota(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope(model_limits={"A": 500, "B": 500, "C": 500, "D": 10})
    llm.set_responder(opinions(lambda b: b["model"] == "C"))
    s = settings(llm, tmp_path, score_method="models", score_calls=2, fallback_models=("B", "C", "D"))
    client = LLMClient(s, ledger=open_ledger(s))
    client.chat([{"role": "user", "content": "hi"}], model="D")  # the ledger learns D has 9 left: no spare
    pred = build_predictor(config("text_classification"), s)
    pred.client = client
    pred.opinions.client = client
    pred.single.client = client
    [item] = pred.predict_batch(reviews(1))
    models = [b["model"] for b in chat_bodies(llm)][1:]
    assert models == ["A", "B", "C"]  # the answer from A, second opinions from B and C; D keeps its last calls
    assert all(b["temperature"] == 0.1 for b in chat_bodies(llm)[2:])
    assert item["score"] == pytest.approx((1 + 0.8) / 3, abs=1e-3)  # B agrees, C does not
    costs = client.pool.ledger.costs()
    assert costs["B"].calls == 1 and costs["C"].calls == 1  # each model's own ledger line
    assert SCORE_ACTIVITY.snapshot().calls == {("models", "B"): 1, ("models", "C"): 1}


def test_verbal_reads_a_probability_per_option(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope()

    def respond(body: dict) -> fake.Reply:
        if "probability" in body["messages"][-1]["content"] or "概率" in body["messages"][-1]["content"]:
            return fake.chat(json.dumps({"sentiment": {POSITIVE: 0.6, NEGATIVE: 0.3, "中性": 0.1}}))
        return fake.chat(json.dumps({"sentiment": POSITIVE, "_confidence": 0.9}, ensure_ascii=False))

    llm.set_responder(respond)
    [item] = predictor(settings(llm, tmp_path, score_method="verbal", score_calls=1)).predict_batch(reviews(1))
    assert llm.chat_calls == 2
    assert item["score"] == pytest.approx(0.6)
    assert item["result"][0]["score"] == pytest.approx(0.6)


def test_off_and_logprobs_make_no_extra_call(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope()
    llm.set_responder(opinions(lambda b: False))
    predictor(settings(llm, tmp_path, score_method="off")).predict_batch(reviews(2))
    assert llm.chat_calls == 2
    predictor(settings(llm, tmp_path / "b", score_method="auto", logprobs=True)).predict_batch(reviews(2, 5))
    assert llm.chat_calls == 4


def test_scoring_degrades_when_quota_runs_out_and_the_pre_label_is_kept(
    llm: fake.FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    quota = llm.modelscope(model_limits={"A": 4})
    llm.set_responder(opinions(lambda b: False))
    pred = predictor(settings(llm, tmp_path))
    items = pred.predict_batch(reviews(3))
    # the three pre-labels first (3 calls); then task 0's first draw (the 4th call); its second is refused
    assert quota.used == {"A": 4}
    assert all(i.get("result") for i in items)  # every pre-label kept
    assert items[0]["score"] == pytest.approx((1 + 0.8) / 2, abs=1e-3)  # the one draw that came back
    assert [i["score"] for i in items[1:]] == [pytest.approx(0.8)] * 2  # today's score, no call spent on it
    assert pred.opinions.method == "off"
    assert SCORE_ACTIVITY.snapshot().degraded
    assert sum("review score degraded" in r.getMessage() for r in caplog.records) == 1


def test_dry_run_counts_the_score_calls(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope(model_limits={"A": 500})
    llm.set_responder(opinions(lambda b: False))
    batch, _ = job(llm, tmp_path, reviews(10), logprobs=False, score_method="agreement", score_calls=3,
                   tasks_per_call=1)
    est = estimate(batch)
    assert est.calls == 10 and est.score_calls == 30 and est.score_method == "agreement"
    assert any("score calls" in line and "40" in line for line in est.lines())
    summary = batch.run(progress=False)
    assert summary.predicted == 10
    assert llm.chat_calls == est.calls + est.score_calls


def test_min_score_withholds_exactly_the_tasks_under_it(
    llm: fake.FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    llm.modelscope()
    confidence = {0: 0.95, 1: 0.5, 2: 0.7, 3: 0.69}

    def respond(body: dict) -> fake.Reply:
        n = int(body["messages"][-1]["content"].split("评论")[1][0])
        return fake.chat(json.dumps({"sentiment": POSITIVE, "_confidence": confidence[n]}, ensure_ascii=False))

    llm.set_responder(respond)
    items = predictor(settings(llm, tmp_path, score_method="off", min_score=0.7)).predict_batch(
        reviews(4), project="7")
    assert [i["result"] != [] for i in items] == [True, False, True, False]
    assert all("result" in i and "error" not in i for i in items)  # stored: not asked again under this version
    assert SCORE_ACTIVITY.snapshot().withheld == {"7": 2}
    assert sum("under the minimum" in r.getMessage() for r in caplog.records) == 2


def test_min_score_setting_and_project_param() -> None:
    s = load_settings({"LLM_MIN_SCORE": "0.8", "LLM_SCORE": "models", "LLM_SCORE_CALLS": "3"})
    assert (s.min_score, s.score_method, s.score_calls) == (0.8, "models", 3)
    assert load_settings({"LLM_SCORE": "off"}).score_method == "off"
    assert project_min_score({"min_score": "0.9"}) == 0.9
    assert project_min_score('{"instructions": "x", "min_score": 0.75}') == 0.75
    assert project_min_score({"min_score": 2}) is None and project_min_score("plain text") is None
    cfg = config("text_classification")
    base = Settings(api_key=TEST_KEY)
    assert build_predictor(cfg, base, min_score=0.9).settings.min_score == 0.9
    assert build_predictor(cfg, base, min_score=0.9).model_version != build_predictor(cfg, base).model_version


def test_status_page_and_metrics_show_score_calls_degradation_and_withheld(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    from my_ml_backend.server.status import StatusData, render
    from my_ml_backend.telemetry.activity import ACTIVITY

    quota = llm.modelscope(model_limits={"A": 4})
    llm.set_responder(opinions(lambda b: False))
    s = settings(llm, tmp_path, min_score=0.99)
    predictor(s).predict_batch(reviews(2), project="12")
    assert quota.used == {"A": 4}
    snap = SCORE_ACTIVITY.snapshot()
    page = render(StatusData(s, ACTIVITY.snapshot(), {}, 0.0, score=snap, score_method="agreement"))
    assert "LLM_SCORE: agreement" in page and "已降级 (degraded)" in page
    assert "<td>agreement</td><td>A</td><td>2</td>" in page
    assert "<td>12</td>" in page and "<td>2</td></tr>" in page  # both tasks of project 12 withheld
    metrics = METRICS.render()
    assert 'ml_backend_score_calls_total{method="agreement",model="A"}' in metrics
    assert 'ml_backend_score_withheld_total{project="12"}' in metrics


def test_a_second_opinion_late_for_the_deadline_keeps_the_answer(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope()

    def respond(body: dict) -> fake.Reply:
        reply = opinions(lambda b: False)(body)
        return replace(reply, delay=3.0) if body["temperature"] > 0.5 else reply  # draws come back late

    llm.set_responder(respond)
    started = time.monotonic()
    items = predictor(settings(llm, tmp_path, batch_deadline=1.0)).predict_batch(reviews(2))
    assert time.monotonic() - started < 2.5  # the batch did not wait for the draws
    assert [i["result"][0]["value"]["choices"] for i in items] == [[POSITIVE], [NEGATIVE]]
    assert [i["score"] for i in items] == [pytest.approx(0.8)] * 2


def test_dry_run_counts_one_models_call_per_other_pool_model(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope()
    batch, _ = job(llm, tmp_path, reviews(5), logprobs=False, score_method="models", score_calls=3,
                   fallback_models=("B",), tasks_per_call=1)
    assert estimate(batch).score_calls == 5  # one other model: one second opinion per task, whatever the budget


def test_a_method_whose_replies_cannot_be_read_is_given_up(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope()
    llm.set_responder(opinions(lambda b: False))  # asked for probabilities, the model answers its usual shape
    pred = predictor(settings(llm, tmp_path, score_method="verbal", score_calls=1))
    items = pred.predict_batch(reviews(14))
    assert llm.chat_calls == 14 + 10  # ten unreadable verbal replies, then no more asked
    assert pred.opinions.method == "off" and "could be read" in SCORE_ACTIVITY.snapshot().degraded
    assert all(i["result"] and i["score"] == pytest.approx(0.8) for i in items)
