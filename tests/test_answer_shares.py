"""LLM_SCORE_SHARES: without logprobs, a score weighed by how over-represented its label is among the answers.

The weighing bound is π/q (π uniform, q the label's smoothed share of the distinct tasks answered), so a label the
model collapses onto scores lower than one answered as often as labels occur; answers with a choice distribution
(logprobs) are left alone, a task answered twice counts once, and the setting and `LLM_SCORE=off` turn it off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from my_ml_backend.labeling.answers import ChoiceDistribution, TaskAnswer
from my_ml_backend.predicting.answer_shares import AnswerShares, share_bound
from my_ml_backend.predicting.factory import build_predictor
from my_ml_backend.settings import Settings
from tests.conftest import TEST_KEY, config
from tests.fake_llm import server as fake

POSITIVE, NEGATIVE = "正面", "负面"


def answer(label: str, score: float = 0.9, control: str = "sentiment", distribution: bool = False) -> TaskAnswer:
    region = {"from_name": control, "to_name": "text", "type": "choices", "value": {"choices": [label]}}
    choices = {control: ChoiceDistribution((POSITIVE, NEGATIVE), (0.5, 0.5))} if distribution else {}
    return TaskAnswer([region], score, 1.0, "zh", choices)


def test_share_bound_is_pi_over_the_smoothed_share() -> None:
    assert share_bound(100, 200, 5, prior_answers=0) == pytest.approx(0.2 / 0.5)
    assert share_bound(40, 200, 5, prior_answers=0) == 1.0  # answered as often as labels occur: no doubt added
    assert share_bound(98, 200, 5) == pytest.approx(0.2 / ((98 + 4) / 220))
    assert share_bound(1, 1, 5) > 0.8  # one answer is no evidence of a collapse
    assert share_bound(7, 7, 1) == 1.0  # a single label cannot be over-represented


def test_a_collapsed_label_scores_below_the_others() -> None:
    shares = AnswerShares(prior_answers=0)
    answers = [answer(POSITIVE)] * 8 + [answer(NEGATIVE)] * 2
    tasks = [{"id": i} for i in range(10)]
    weighed = shares.weigh_batch(list(zip(tasks, answers, strict=True)), {"sentiment": 2})
    assert [a.score for a in weighed] == [pytest.approx(0.9 * 0.5 / 0.8)] * 8 + [0.9] * 2
    assert shares.counts("sentiment") == {POSITIVE: 8, NEGATIVE: 2}


def test_a_task_answered_again_counts_once_with_its_latest_answer() -> None:
    shares = AnswerShares(prior_answers=0)
    shares.weigh_batch([({"id": 1}, answer(POSITIVE)), ({"id": 2}, answer(NEGATIVE))], {"sentiment": 2})
    shares.weigh_batch([({"id": 1}, answer(NEGATIVE))], {"sentiment": 2})
    assert shares.counts("sentiment") == {NEGATIVE: 2}
    shares.weigh_batch([({"data": {"text": "x"}}, answer(POSITIVE))] * 2, {"sentiment": 2})  # no id: by its data
    assert shares.counts("sentiment") == {NEGATIVE: 2, POSITIVE: 1}


def test_the_oldest_tasks_are_forgotten_first() -> None:
    shares = AnswerShares(remembered=3)
    shares.weigh_batch([({"id": i}, answer(POSITIVE if i < 2 else NEGATIVE)) for i in range(5)], {"sentiment": 2})
    assert shares.counts("sentiment") == {NEGATIVE: 3}


def test_answers_with_a_distribution_are_neither_counted_nor_weighed() -> None:
    shares = AnswerShares(prior_answers=0)
    calibrated = answer(POSITIVE, 0.7, distribution=True)
    weighed = shares.weigh_batch([({"id": 0}, calibrated)] + [({"id": i}, answer(NEGATIVE)) for i in range(1, 4)],
                                 {"sentiment": 2})
    assert weighed[0] is calibrated
    assert shares.counts("sentiment") == {NEGATIVE: 3}


def settings(llm: fake.FakeLLMServer, tmp_path: Path, **kw: object) -> Settings:
    params: dict = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "A", "timeout": 5.0, "max_retries": 0,
                    "data_dir": tmp_path, "fewshot_k": 0, "fewshot_auto": False, "logprobs": False,
                    "batch_deadline": 3600.0}
    params.update(kw)
    return Settings(**params)


def collapsed(body: dict) -> fake.Reply:
    """A model that answers 正面 for 4 texts in 5 and 负面 for the fifth, always sure (0.9)."""
    text = body["messages"][-1]["content"]
    label = NEGATIVE if "评论4" in text else POSITIVE
    return fake.chat(json.dumps({"sentiment": label, "_confidence": 0.9}, ensure_ascii=False))


def tasks(n: int) -> list[dict]:
    return [{"id": i, "data": {"text": f"评论{i % 5}：第{i}条"}} for i in range(n)]


def test_predictions_without_logprobs_rank_the_collapsed_label_first_for_review(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    llm.modelscope()
    llm.set_responder(collapsed)
    s = settings(llm, tmp_path)
    predictor = build_predictor(config("text_classification"), s)
    items = predictor.predict_batch(tasks(20))
    by_label = {item["result"][0]["value"]["choices"][0]: item["score"] for item in items}
    assert by_label[NEGATIVE] == pytest.approx(0.9)  # answered 4 times in 20, under its uniform share
    assert by_label[POSITIVE] == pytest.approx(0.9 * share_bound(16, 20, 3), abs=1e-3)  # three labels
    assert by_label[POSITIVE] < by_label[NEGATIVE]
    unweighed = build_predictor(config("text_classification"), s.with_changes(score_shares=False))
    assert predictor.model_version != unweighed.model_version  # another score: fitted maps are not carried over


@pytest.mark.parametrize("change", [{"score_shares": False}, {"score_method": "off"}])
def test_the_setting_and_score_off_leave_the_self_reported_score(
    llm: fake.FakeLLMServer, tmp_path: Path, change: dict
) -> None:
    llm.modelscope()
    llm.set_responder(collapsed)
    s = settings(llm, tmp_path, **change)
    items = build_predictor(config("text_classification"), s).predict_batch(tasks(20))
    assert {item["score"] for item in items} == {0.9}
    assert s.score_fingerprint == ""


def test_with_logprobs_nothing_is_weighed_and_the_version_is_unchanged(tmp_path: Path) -> None:
    with_logprobs = Settings(api_key=TEST_KEY, data_dir=tmp_path, logprobs=True)
    assert with_logprobs.score_fingerprint == ""
    assert Settings(api_key=TEST_KEY, data_dir=tmp_path, logprobs=False).score_fingerprint == "shares"


NEUTRAL = "中性"


def last_listed_pull(body: dict) -> fake.Reply:
    """A model that answers a clear text by its words, and a hedged one ("偏") with the label listed last."""
    system, text = body["messages"][0]["content"], body["messages"][-1]["content"]
    listed = [line.strip()[2:] for line in system.splitlines() if line.strip().startswith("- ")]
    label = listed[-1] if "偏" in text else POSITIVE if "好" in text else NEGATIVE
    return fake.chat(json.dumps({"sentiment": label, "_confidence": 0.9}, ensure_ascii=False))


def test_orders_asks_the_list_reversed_and_keeps_the_less_over_represented_label(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    llm.modelscope()
    llm.set_responder(last_listed_pull)
    words = ["差"] * 6 + ["好"] * 2 + ["偏"] * 4
    batch = [{"id": i, "data": {"text": f"评论{i}：{w}"}} for i, w in enumerate(words)]
    s = settings(llm, tmp_path, score_method="orders", score_calls=3)  # one other order, whatever the budget
    items = build_predictor(config("text_classification"), s).predict_batch(batch)
    bodies = [r["body"] for r in llm.requests if str(r.get("path", "")).endswith("/chat/completions")]
    assert len(bodies) == 2 * len(batch)
    orders = {tuple(line.strip()[2:] for line in b["messages"][0]["content"].splitlines()
                    if line.strip().startswith("- ")) for b in bodies}
    assert len(orders) == 2 and {tuple(reversed(o)) for o in orders} == orders  # canonical, and reversed
    labels = [item["result"][0]["value"]["choices"][0] for item in items]
    pulled = {o[-1] for o in orders}  # what the hedged texts were answered in each order
    # hedged: one order says 负面 (already the most answered label), the other a label few tasks have: kept
    assert pulled == {NEGATIVE, NEUTRAL}
    assert labels == [NEGATIVE] * 6 + [POSITIVE] * 2 + [NEUTRAL] * 4
    scores = [item["score"] for item in items]
    assert max(scores[8:]) < min(scores[:8])  # the orders disagreed on the hedged tasks: reviewed first


def test_orders_without_share_weighing_keeps_the_first_answer(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope()
    llm.set_responder(last_listed_pull)
    batch = [{"id": i, "data": {"text": f"评论{i}：{w}"}} for i, w in enumerate(["差", "偏"])]
    s = settings(llm, tmp_path, score_method="orders", score_calls=1, score_shares=False)
    items = build_predictor(config("text_classification"), s).predict_batch(batch)
    first = [line.strip()[2:] for line in llm.requests[0]["body"]["messages"][0]["content"].splitlines()
             if line.strip().startswith("- ")]
    assert items[1]["result"][0]["value"]["choices"] == [first[-1]]
    assert items[1]["score"] < items[0]["score"]


def test_the_dry_run_counts_one_orders_call_per_task(tmp_path: Path) -> None:
    from my_ml_backend.predicting.factory import schema_for
    from my_ml_backend.predicting.second_opinions import extra_calls

    targets = schema_for(config("text_classification")).targets
    for budget, calls in ((0, 0), (1, 1), (5, 1)):
        s = Settings(api_key=TEST_KEY, data_dir=tmp_path, logprobs=False, score_method="orders", score_calls=budget)
        assert extra_calls(s, False, targets) == calls
