"""`batch_predict.py --dry-run`: what a run would cost, without spending a call.

It walks the project like the run (same tasks skipped, same chunks, same packing, the
same response cache), builds every prompt the run would send and counts:
- calls: one per pack the run would form (re-asks of missed tasks not included);
- score calls: the extra calls per task of the review score (`LLM_SCORE`, `LLM_SCORE_CALLS`) for each task
  the run would ask, at most (scoring stops when the pool has no spare quota, the pre-labels go on);
- tokens: prompt characters times the tokens-per-character this account's answers
  showed so far (the quota ledger keeps that per model), and completion tokens per
  task likewise; before any answer, a rough rule (a token per CJK character, one per
  four other characters; `COMPLETION_PER_TASK` tokens per task);
- time: calls over `LLM_CONCURRENCY` times the seconds a call took so far;
- today's remaining quota per pool model, and whether the run fits in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..labeling import packing
from ..llm.errors import PredictionError
from ..llm.quota import ACCOUNT, Cost, Quota
from ..predicting.second_opinions import extra_calls
from .batch import BatchJob, Summary, chunks

COMPLETION_PER_TASK = 40  # tokens of one task's answer before any was measured
SECONDS_PER_CALL = 5.0  # before any call was timed


@dataclass
class Estimate:
    """The dry run's figures (printed by `lines`)."""

    total: int = 0
    skipped: int = 0  # already predicted with this model_version
    to_predict: int = 0
    cached: int = 0  # answered by the response cache: no call
    unpreparable: int = 0  # no text: would fail without a call
    calls: int = 0
    score_calls: int = 0  # extra calls of the review score, at most
    score_method: str = "off"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    per_call: str = "1"
    calibrated: bool = False
    quota: list[Quota] = field(default_factory=list)
    reset: str = ""

    @property
    def fits(self) -> bool | None:
        """Whether today's quota covers the calls; None when the endpoint never said."""
        account = next((q for q in self.quota if q.scope == ACCOUNT), None)
        if account is not None and account.remaining is not None and account.remaining < self.calls:
            return False
        models = [q for q in self.quota if q.scope != ACCOUNT]
        if any(q.remaining is None and not q.out for q in models):
            return None
        return sum(0 if q.exhausted else (q.remaining or 0) for q in models) >= self.calls

    def lines(self) -> list[str]:
        basis = "按本账号已有回答校准 (calibrated on this account's answers)" if self.calibrated else \
            "粗略规则，首批调用后更准 (rough rule until calls were made)"
        out = [
            "试运行，未调用模型 (dry run: no call made)",
            f"任务 (tasks): {self.total}; 已有预测跳过 (skipped, already predicted): {self.skipped}; "
            f"待预测 (to predict): {self.to_predict}",
            f"缓存已有答案 (answered by the cache): {self.cached}; 无文本 (no text): {self.unpreparable}",
            f"调用次数 (calls) at LLM_TASKS_PER_CALL={self.per_call}: {self.calls}",
            f"评分额外调用 (score calls) at LLM_SCORE={self.score_method}: 至多 (at most) {self.score_calls}; "
            f"合计 (total) {self.calls + self.score_calls}",
            f"预计 tokens (estimated tokens): prompt {self.prompt_tokens} + completion {self.completion_tokens}"
            f" — {basis}",
            f"预计用时 (estimated time): {self.seconds / 60:.1f} min",
            "今日剩余额度 (today's remaining quota, as last reported):",
        ]
        for q in self.quota:
            name = "账号 (account)" if q.scope == ACCOUNT else q.scope
            left = "已停用 (out: " + q.out + ")" if q.out else ("未知 (unknown)" if q.remaining is None else
                                                              f"{q.remaining}" + (f"/{q.limit}" if q.limit else ""))
            out.append(f"  {name}: {left}")
        verdict = {True: "是 (yes)", False: f"否 (no): 额度 {self.reset} 恢复 (quota resets {self.reset})",
                   None: "未知 (unknown): 端点尚未报告额度 (the endpoint has not reported its quota yet)"}
        out.append(f"今日额度是否够用 (fits in today's quota): {verdict[self.fits]}")
        return out


def estimate(job: BatchJob, limit: int | None = None) -> Estimate:
    """The figures of `job.run(limit)` without running it."""
    predictor = job.predictor
    client = predictor.client
    summary = Summary()
    est = Estimate()
    n = predictor.tasks_per_call
    est.per_call = "auto" if n == 0 else str(n)
    costs = _totals(client.pool.ledger.costs(), client.pool.models)
    est.calibrated = costs.calls > 0 and costs.prompt_chars > 0
    tokens_per_char = costs.prompt_tokens / costs.prompt_chars if est.calibrated else None
    completion_per_task = costs.completion_tokens / max(1, costs.tasks) if est.calibrated else COMPLETION_PER_TASK
    inputs = predictor.prompt_inputs()
    score_per_task = extra_calls(predictor.settings, client.logprobs, predictor.schema.targets)
    est.score_method = predictor.opinions.method
    for chunk in chunks(job.pending(job.done_task_ids(), summary), job.chunk_size, limit):
        est.to_predict += len(chunk)
        plan = predictor.plan(chunk, inputs)
        est.unpreparable += sum(1 for r in plan.ready.values() if isinstance(r, PredictionError))
        est.cached += sum(1 for r in plan.ready.values() if not isinstance(r, PredictionError))
        for group in plan.groups:
            per_task = [plan.prepared[i].ask.messages for i in group]
            messages = per_task[0] if len(group) == 1 else packing.pack_messages(per_task, packing.task_ids(len(group)))
            text = "".join(str(m.get("content") or "") for m in messages)
            est.calls += 1
            est.score_calls += score_per_task * len(group)
            est.prompt_tokens += round(len(text) * tokens_per_char) if tokens_per_char else \
                packing.estimate_tokens(text) + 8 * len(messages)
            est.completion_tokens += round(completion_per_task * len(group))
    est.total, est.skipped = summary.total, summary.skipped
    per_call_seconds = costs.seconds / costs.calls if costs.calls else SECONDS_PER_CALL
    est.seconds = est.calls * per_call_seconds / max(1, predictor.settings.concurrency)
    est.quota = client.pool.status()
    est.reset = client.pool.ledger.clock.describe_reset()[1]
    return est


def _totals(costs: dict[str, Cost], models: tuple[str, ...]) -> Cost:
    """The pool's models' costs added up (other models' history does not predict this pool)."""
    picked = [c for m, c in costs.items() if m in models] or list(costs.values())
    return Cost(*(sum(getattr(c, f) for c in picked) for f in Cost.__dataclass_fields__))

