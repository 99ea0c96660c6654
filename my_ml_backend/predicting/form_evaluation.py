"""The project's annotations judge how it is asked: its answer strategy (`LLM_ANSWER_STRATEGY=auto`) and its
few-shot form (`FEWSHOT_EXAMPLES=auto`).

`learning.strategy_choice` and `learning.autotune` decide from the judgements; this module supplies them by
predicting each annotated task through the same predictor the project gets, so what it measures is what the
project is served.
"""

from __future__ import annotations

import time

from ..labeling.answers import TaskAnswer
from ..labeling.free_text import free_text_target
from ..labeling.prompts import PromptGuidance
from ..labeling.schema import LabelingSchema
from ..learning.autotune import EvaluationAborted, FewShotEvaluation, Judged, candidates, evaluate, fitted_fields
from ..learning.examples import Example, answers_from_results, region_pairs
from ..learning.index import ExampleIndex
from ..learning.retrieval import FewShotExamples, FewShotForm
from ..learning.strategy_choice import FREE_TEXT, STRATEGIES, STRUCTURED, StrategyVerdict, evaluate_strategies
from ..llm.errors import PredictionError
from ..settings import Settings
from ..telemetry.metrics import API_REQUESTS, Tally
from ..versioning import model_version
from .factory import build_predictor, schema_for
from .predictor import Predictor
from .prepare import PromptInputs


def task_of(schema: LabelingSchema, example: Example) -> dict:
    """An annotated example back as a task (its texts under the config's data keys)."""
    data = {s.data_key: example.texts[s.name] for s in schema.sources if s.name in example.texts}
    return {"id": example.task_id, "data": data}


def _same(guess: object, gold: object) -> bool:
    """Equal answers; a multiple choice in any order."""
    if isinstance(guess, list) and isinstance(gold, list):
        return sorted(map(str, guess)) == sorted(map(str, gold))
    return guess == gold


def judged(schema: LabelingSchema, example: Example, answer: TaskAnswer) -> Judged:
    """Whether the answer equals the annotator's, its score, and each scored region's verdict."""
    got = answers_from_results(schema, answer.regions)
    ok = all(_same(got.get(name), gold) for name, gold in example.answers.items())
    return Judged(ok, answer.score, region_pairs(schema, answer.regions, example.answers))


def evaluate_project(
    label_config: str | None, settings: Settings, guidance: PromptGuidance, index: ExampleIndex, seed: int = 0
) -> FewShotEvaluation:
    """The project's answer strategy (LLM_ANSWER_STRATEGY=auto), then its few-shot form (FEWSHOT_EXAMPLES=auto)
    under that strategy, each judged on its annotations, and the score maps fitted on what will be served.

    A plain answer is asked zero-shot, as llm_interactive asks: where it wins, the forms are not judged.
    """
    schema = schema_for(label_config)
    settings = settings.with_changes(min_score=0.0)  # judged on every answer, under the version maps are found by
    calls = Tally()
    verdict = None
    if settings.chooses_answer_strategy and free_text_target(schema.targets) is not None:
        verdict = _judge_strategies(label_config, settings, guidance, index, calls, seed)
    if verdict is not None and verdict.strategy == FREE_TEXT:
        chosen = settings.with_changes(answer_strategy=FREE_TEXT)
        version = model_version(chosen, schema.config_hash, guidance.fingerprint())
        evaluation = FewShotEvaluation(reason="a plain answer is asked without examples", samples=verdict.samples,
                                       at=time.time(), **fitted_fields(verdict.judged, index, version))
    elif settings.fewshot_auto and settings.fewshot_eval_calls > 0:
        evaluation = _judge_forms(label_config, settings.with_changes(answer_strategy=STRUCTURED), guidance, index,
                                  calls, seed)
    else:
        evaluation = FewShotEvaluation(reason="few-shot form not chosen automatically", at=time.time())
    if verdict is not None:
        evaluation.strategy, evaluation.strategy_accuracy = verdict.strategy, verdict.accuracy
        evaluation.strategy_samples, evaluation.strategy_reason = verdict.samples, verdict.reason
    evaluation.calls = int(calls.get(API_REQUESTS))
    return evaluation


def _judge_strategies(
    label_config: str | None, settings: Settings, guidance: PromptGuidance, index: ExampleIndex, calls: Tally,
    seed: int,
) -> StrategyVerdict:
    """Each answer strategy's zero-shot answers to the annotated tasks, through the predictor it would be served by."""
    schema = schema_for(label_config)
    predictors = {s: build_predictor(label_config, settings.with_changes(answer_strategy=s), guidance)
                  for s in STRATEGIES}

    def judge(example: Example, strategy: str) -> Judged:
        return _judge(predictors[strategy], schema, example, PromptInputs(guidance), calls)

    return evaluate_strategies(index, settings.answer_eval_calls, judge, lambda: int(calls.get(API_REQUESTS)), seed)


def _judge_forms(
    label_config: str | None, settings: Settings, guidance: PromptGuidance, index: ExampleIndex, calls: Tally,
    seed: int,
) -> FewShotEvaluation:
    """Leave-one-out accuracy of each candidate form on the project's annotations, and the score maps fitted on
    the chosen form's predictions (raw scores: this predictor has no map)."""
    schema = schema_for(label_config)
    predictor = build_predictor(label_config, settings, guidance)

    def judge(example: Example, form: FewShotForm) -> Judged:
        examples = FewShotExamples(index, form, settings.fewshot_max_chars) if form.k else None
        return _judge(predictor, schema, example, PromptInputs(guidance, examples), calls)

    return evaluate(
        index, candidates(settings.fewshot_k), settings.fewshot_eval_calls, judge,
        lambda: int(calls.get(API_REQUESTS)), seed, predictor.model_version,
        model_version(settings.without_extension(), schema.config_hash, guidance.fingerprint()),
    )


def _judge(predictor: Predictor, schema: LabelingSchema, example: Example, inputs: PromptInputs,
           calls: Tally) -> Judged:
    """The example's task predicted and judged against its annotation; a failed call judges nothing."""
    try:
        answer = predictor.answer_task(task_of(schema, example), inputs, calls)
    except PredictionError as err:
        if err.fatal:  # no key, quota out ...: every further judgement would fail the same way
            raise EvaluationAborted(err.message) from err
        return Judged(False, error=True)
    outcome = judged(schema, example, answer)
    if answer.before_extension is not None:  # the evaluation judges the answer before extension too
        return outcome._replace(before=judged(schema, example, answer.before_extension))
    return outcome
