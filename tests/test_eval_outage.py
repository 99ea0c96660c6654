"""`FEWSHOT_EXAMPLES=auto` during an outage: failed predictions say nothing of the forms.

Before, an evaluation run while the endpoint answered 503 judged every form 0 % and stored that as the project's
decision ("no form beat zero-shot"), so the project stayed zero-shot until its examples doubled, after 32 calls.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from my_ml_backend.learning import autotune
from my_ml_backend.learning.autotune import EvaluationAborted, FewShotEvaluation, Judged, candidates, evaluate
from my_ml_backend.learning.examples import Example
from my_ml_backend.learning.index import ExampleIndex
from my_ml_backend.learning.store import SQLiteExampleStore
from tests.test_learning import SCHEMA


def pool(n: int = 24) -> ExampleIndex:
    labels = ("正面", "负面")
    return ExampleIndex.from_examples(
        [Example(i, {"text": f"评论 {i} 号"}, {"sentiment": labels[i % 2]}) for i in range(1, n + 1)], SCHEMA)


def run(judge: object) -> FewShotEvaluation:
    calls = iter(range(10_000))
    return evaluate(pool(), candidates(3), 60, judge, lambda: next(calls), 0, "v", "v")  # type: ignore[arg-type]


def test_an_evaluation_whose_predictions_fail_is_aborted_not_stored_as_a_decision() -> None:
    with pytest.raises(EvaluationAborted, match="3 of 3 predictions failed"):
        run(lambda example, form: Judged(False, error=True))
    # a failure now and then is one task's: the evaluation goes on
    seen = iter(range(10_000))
    choice = run(lambda example, form: Judged(False, error=True) if next(seen) == 5 else Judged(True, 0.9))
    assert choice.samples > 0 and choice.accuracy["0"] > 0.5


def test_after_an_aborted_evaluation_the_previous_choice_stays_and_a_retry_waits(tmp_path: Path) -> None:
    store = SQLiteExampleStore(tmp_path / "examples.sqlite3")
    previous = FewShotEvaluation(form="block-3", reason="an earlier evaluation", samples=12)
    store.set_meta("9", autotune.meta_key("h"), previous.dumps())

    def aborted() -> FewShotEvaluation:
        raise EvaluationAborted("3 of 3 predictions failed")

    assert autotune.start(store, "9", "h", 16, aborted)
    for worker in [t for t in threading.enumerate() if t.name == "fewshot-eval-9"]:  # the evaluation's thread
        worker.join(timeout=10)
    assert autotune.stored_evaluation(store, "9", "h").form == "block-3"  # not replaced by a 0 % "decision"
    # the next webhook does not retry yet
    assert not autotune.start(store, "9", "h", 16, lambda: FewShotEvaluation(form="0"))
    marker = float(store.get_meta("9", "fewshot_eval_running:h"))
    assert marker + autotune.RUNNING_FOR - time.time() == pytest.approx(autotune.RETRY_AFTER, abs=5)
