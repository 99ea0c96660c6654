"""Issue 14: `batch_predict.py --dry-run` and the batch job on a ModelScope-shaped free tier.

The LLM is the local OpenAI-compatible server in ModelScope mode; Label Studio's API is
a small in-memory stand-in with the SDK's method names (the real-Label-Studio batch
tests are in tests/e2e/test_batch_job.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from my_ml_backend.jobs.batch import BatchJob, default_chunk_size
from my_ml_backend.jobs.estimate import estimate
from my_ml_backend.predicting.factory import build_predictor
from my_ml_backend.settings import Settings
from tests.conftest import TEST_KEY, config
from tests.fake_llm import server as fake
from tests.test_packing import answering


class StandInLabelStudio:
    """The five SDK calls the batch job (and a queued chunk) makes, over an in-memory project."""

    def __init__(self, tasks: list[dict], label_config: str) -> None:
        self.stored: list[SimpleNamespace] = []
        items = [SimpleNamespace(id=t["id"], data=t["data"]) for t in tasks]
        project = SimpleNamespace(task_number=len(tasks), label_config=label_config)
        self.projects = SimpleNamespace(get=lambda id: project)  # noqa: A006, ARG005
        self.tasks = SimpleNamespace(list=lambda project, page_size: iter(items))  # noqa: ARG005
        self.predictions = SimpleNamespace(
            list=lambda project=None, task=None: [p for p in self.stored if task in (None, p.task)],  # noqa: ARG005
            create=lambda **kw: self.stored.append(SimpleNamespace(task=kw["task"], model_version=kw["model_version"])),
        )


def reviews(n: int, start: int = 0) -> list[dict]:
    words = ["很好，推荐购买", "质量太差了，退货", "物流很快，包装好", "客服态度差，不会再买", "一般般吧"]
    texts = [f"评论{i}：{words[i % 5]}" + "，还行" * (i % 7) for i in range(start, start + n)]
    return [{"id": i, "data": {"text": t}} for i, t in zip(range(start, start + n), texts, strict=True)]


def job(llm: fake.FakeLLMServer, tmp_path: Path, tasks: list[dict], **kw: object) -> tuple[BatchJob, object]:
    params: dict = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "A", "timeout": 5.0, "max_retries": 0,
                    "data_dir": tmp_path, "fewshot_k": 0, "batch_deadline": 3600.0}
    params.update(kw)
    settings = Settings(**params)
    cfg = config("text_classification")
    ls = StandInLabelStudio(tasks, cfg)
    predictor = build_predictor(cfg, settings)
    return BatchJob(ls, 1, predictor, default_chunk_size(predictor)), ls  # type: ignore[arg-type]


@pytest.mark.parametrize("per_call", [1, 8, 0])
def test_dry_run_matches_the_real_run_within_15_percent(
    llm: fake.FakeLLMServer, tmp_path: Path, per_call: int
) -> None:
    llm.modelscope(account_limit=5000, model_limits={"A": 500})
    llm.set_responder(answering())
    tasks = reviews(300)
    batch, _ = job(llm, tmp_path, tasks, tasks_per_call=per_call)
    batch.run(limit=40, progress=False)  # a first small run: the ledger learns what calls cost here
    calls_before = llm.chat_calls
    est = estimate(batch)
    assert llm.chat_calls == calls_before  # the dry run spends nothing
    assert est.skipped == 40 and est.to_predict == 260 and est.calibrated
    summary = batch.run(progress=False)
    real_calls = llm.chat_calls - calls_before
    print(f"per_call={per_call}: calls {est.calls} vs {real_calls}; prompt {est.prompt_tokens} vs "
          f"{summary.prompt_tokens}; completion {est.completion_tokens} vs {summary.completion_tokens}")
    assert summary.predicted == 260 and summary.failed == 0
    assert abs(est.calls - real_calls) <= 0.15 * real_calls, (est.calls, real_calls)
    assert abs(est.prompt_tokens - summary.prompt_tokens) <= 0.15 * summary.prompt_tokens, (
        est.prompt_tokens, summary.prompt_tokens)
    assert abs(est.completion_tokens - summary.completion_tokens) <= 0.15 * summary.completion_tokens, (
        est.completion_tokens, summary.completion_tokens)
    if per_call == 8:
        assert real_calls == 33  # 260 tasks in packs of 8: 32 full packs and one of 4 (no re-asks)


def test_dry_run_reports_quota_and_whether_it_fits(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.modelscope(account_limit=2000, model_limits={"A": 25, "C": 40}, retired={"B": 400})
    llm.set_responder(answering())
    batch, _ = job(llm, tmp_path, reviews(120), fallback_models=("B", "C"))
    fresh = estimate(batch)
    assert fresh.calls == 120 and fresh.fits is None and not fresh.calibrated  # nothing reported yet
    assert "未知 (unknown)" in "\n".join(fresh.lines())
    batch.run(limit=30, progress=False)  # A answers 25, B refuses once, C answers 5
    est = estimate(batch)
    text = "\n".join(est.lines())
    assert est.calls == 90 and est.fits is False
    assert "A: 0/25" in text and "B: 已停用 (out: retired)" in text and "C: 35/40" in text
    assert "否 (no)" in text and "Asia/Shanghai" in text
    assert re.search(r"调用次数 \(calls\) at LLM_TASKS_PER_CALL=1: 90", text)


def test_batch_job_stops_cleanly_when_the_quota_is_out(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    quota = llm.modelscope(account_limit=2000, model_limits={"A": 25, "C": 30}, retired={"B": 404})
    llm.set_responder(answering())
    batch, ls = job(llm, tmp_path, reviews(200), fallback_models=("B", "C"))
    summary = batch.run(progress=False)
    assert summary.predicted == summary.posted == 55 == len(ls.stored)
    assert summary.models == {"A": 25, "C": 30} and summary.refusals == {"B": 1}
    assert quota.used == {"A": 25, "C": 30} and quota.refused == {"B": 1}  # not one 429 for A or C
    assert "今日额度已用完" in summary.stopped and "将于 00:00 恢复" in summary.stopped
    text = "\n".join(summary.lines())
    assert "回答的模型 (answered by): C × 30, A × 25; 拒绝 (refusals): B × 1" in text
    assert "重新运行同一命令即可继续" in text
    # the next day: the same command resumes where it stopped
    quota.new_day()
    batch.predictor.client.pool.ledger.clear()  # what the new quota day does to the ledger
    again = batch.run(progress=False)
    assert again.skipped == 55 and again.predicted == 55 and again.models == {"A": 25, "C": 30}


def test_the_batch_job_scores_with_the_projects_fitted_map_as_predict_does(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    """Predictions posted by the batch job share `/predict`'s model_version and Data Manager column, so their
    scores must mean the same: the project's stored score map (fitted on this model and prompt) applies to both;
    a map fitted for another model does not."""
    from my_ml_backend.labeling.prompts import PromptGuidance
    from my_ml_backend.learning.autotune import FewShotEvaluation, meta_key
    from my_ml_backend.learning.scorefit import ScoreMap
    from my_ml_backend.learning.store import open_example_store
    from my_ml_backend.predicting.factory import project_evaluation, schema_for
    from my_ml_backend.versioning import model_version

    llm.set_responder(lambda body: fake.chat('{"sentiment": "正面", "_confidence": 0.9}'))
    settings = Settings(api_key=TEST_KEY, base_url=llm.base_url, model="A", timeout=5.0, max_retries=0,
                        data_dir=tmp_path, logprobs=False, batch_deadline=3600.0,
                        score_shares=False)  # the raw score is the self-reported 0.9 (test_answer_shares weighs it)
    cfg = config("text_classification")
    schema = schema_for(cfg)
    guidance = PromptGuidance(settings.instructions, settings.output_language, settings.reasoning)
    zero_shot = model_version(settings, schema.config_hash, guidance.fingerprint())
    store = open_example_store(settings)
    assert store is not None

    def scores_with(version: str) -> float:
        fitted = ScoreMap(a=1.0, b=-2.0, n=30, right=9, version=version).to_dict()
        store.set_meta("1", meta_key(schema.config_hash), FewShotEvaluation(form="0", score_map=fitted).dumps())
        predictor = build_predictor(cfg, settings, evaluation=project_evaluation(cfg, settings, 1))
        [prediction] = predictor.predict_batch(reviews(1))
        return prediction["score"]

    assert scores_with(zero_shot) == pytest.approx(0.5492, abs=1e-3)  # expit(logit(0.9) - 2)
    assert scores_with("another-model-1234") == pytest.approx(0.9)


def test_tasks_without_text_never_stop_the_run_but_a_dead_endpoint_does(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    """Two whole chunks of blank rows (no call made) used to stop the run as if the endpoint were dead; they were
    listed first again by every rerun, so the project could never be finished."""
    llm.set_responder(answering())
    blank = [{"id": 1000 + i, "data": {"text": ""}} for i in range(20)]
    batch, ls = job(llm, tmp_path, blank + reviews(30))
    summary = batch.run(progress=False)
    assert summary.stopped == "" and summary.posted == 30 == len(ls.stored) and summary.failed == 20
    llm.set_default(fake.error(500, "internal server error"))
    llm.set_responder(None)
    dead, ls = job(llm, tmp_path / "dead", reviews(40, start=100))
    summary = dead.run(progress=False)
    assert "every task of the last chunks failed" in summary.stopped
    assert summary.failed == 2 * dead.chunk_size < 40 and not ls.stored  # stopped after two chunks, not all 40
