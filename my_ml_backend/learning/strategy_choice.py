"""`LLM_ANSWER_STRATEGY=auto`: per project, ask single-choice tasks for JSON or for a plain answer, by evidence.

No one way of asking wins everywhere: on one small model the JSON answer wins on Chinese reviews and the
plain answer (llm_interactive's) on news articles without logprobs (docs/decisions.md). So both are asked,
zero-shot, on a label-stratified sample of the project's annotated tasks, within `ANSWER_EVAL_CALLS`, and
the one with more right answers is kept; a tie keeps JSON, the default that wins pooled over our sets on
both endpoint kinds. This module decides; the predictions come from the caller
(`predicting.form_evaluation`), as for the few-shot forms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .autotune import MIN_EXAMPLES, MIN_SAMPLES, Judged, judge_sample, stratified_sample
from .examples import Example
from .index import ExampleIndex

STRUCTURED = "structured"
FREE_TEXT = "free-text"
STRATEGIES = (STRUCTURED, FREE_TEXT)  # the default first: it wins ties


@dataclass
class StrategyVerdict:
    """What the strategy evaluation found: the strategy, each one's accuracy, the judged tasks of the winner."""

    strategy: str = STRUCTURED
    accuracy: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    reason: str = "not evaluated"
    judged: list[tuple[Judged, str]] = field(default_factory=list)  # the winner's, with each task's label


def decide_strategy(right: dict[str, list[bool]]) -> tuple[str, str]:
    """The strategy with the most right answers on the same tasks (ties: the earlier in `STRATEGIES`), and why."""
    n = len(right.get(STRUCTURED) or [])
    best = max((s for s in STRATEGIES if len(right.get(s) or []) == n),
               key=lambda s: (sum(right[s]), -STRATEGIES.index(s)))
    counts = ", ".join(f"{s} {sum(right[s])}" for s in STRATEGIES if s in right)
    if best == STRUCTURED:
        return best, f"JSON right as often or more ({counts} of {n})"
    return best, f"{best} right more often ({counts} of {n})"


def evaluate_strategies(
    index: ExampleIndex,
    budget: int,
    judge: Callable[[Example, str], Judged],
    spent: Callable[[], int],
    seed: int = 0,
    strategies: Sequence[str] = STRATEGIES,
) -> StrategyVerdict:
    """Each strategy's zero-shot accuracy on the same sample of annotated tasks, within `budget` calls.

    `judge(example, strategy)` predicts the example's task asked that way and says whether the answer equals the
    annotator's (and its score, for the score map); `spent()` counts the LLM requests made so far.
    """
    per_task = len(strategies)
    if budget <= 0 or len(index) < MIN_EXAMPLES or budget // per_task < MIN_SAMPLES:
        reason = "ANSWER_EVAL_CALLS=0" if budget <= 0 else f"{len(index)} examples, budget {budget}: too few to judge"
        return StrategyVerdict(reason=reason)
    sample = stratified_sample(index, budget // per_task, seed)
    start = spent()
    judged = judge_sample(index, sample, {s: s for s in strategies}, judge, lambda: spent() - start, budget)
    right = {s: [o.ok for o, _ in outcomes] for s, outcomes in judged.items()}
    n = len(right[STRUCTURED])
    if n < MIN_SAMPLES:
        return StrategyVerdict(samples=n, reason=f"{n} tasks judged within the budget: too few")
    strategy, why = decide_strategy(right)
    return StrategyVerdict(strategy, {s: sum(r) / n for s, r in right.items()}, n, why, judged[strategy])
