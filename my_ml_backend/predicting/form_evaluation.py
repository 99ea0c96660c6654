"""`FEWSHOT_EXAMPLES=auto`: each candidate few-shot form judged on the project's own annotations.

`learning.autotune` decides from the judgements; this module supplies them by predicting each annotated
task through the same predictor the project gets, so what it measures is what the project is served.
"""

from __future__ import annotations

from ..labeling.answers import TaskAnswer
from ..labeling.prompts import PromptGuidance
from ..labeling.schema import LabelingSchema
from ..learning.autotune import EvaluationAborted, FewShotEvaluation, Judged, candidates, evaluate
from ..learning.examples import Example, answers_from_results, region_pairs
from ..learning.index import ExampleIndex
from ..learning.retrieval import FewShotExamples, FewShotForm
from ..llm.errors import PredictionError
from ..settings import Settings
from ..telemetry.metrics import API_REQUESTS, Tally
from ..versioning import model_version
from .factory import build_predictor, schema_for
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


def choose_form(
    label_config: str | None, settings: Settings, guidance: PromptGuidance, index: ExampleIndex, seed: int = 0
) -> FewShotEvaluation:
    """Leave-one-out accuracy of each candidate form on the project's annotations, and the score maps fitted on
    the chosen form's predictions (raw scores: this predictor has no map)."""
    schema = schema_for(label_config)
    settings = settings.with_changes(min_score=0.0)  # judged on every answer, under the version maps are found by
    predictor = build_predictor(label_config, settings, guidance)
    calls = Tally()

    def judge(example: Example, form: FewShotForm) -> Judged:
        examples = FewShotExamples(index, form, settings.fewshot_max_chars) if form.k else None
        try:
            answer = predictor.answer_task(task_of(schema, example), PromptInputs(guidance, examples), calls)
        except PredictionError as err:
            if err.fatal:  # no key, quota out ...: every further judgement would fail the same way
                raise EvaluationAborted(err.message) from err
            return Judged(False, error=True)
        outcome = judged(schema, example, answer)
        if answer.before_extension is not None:  # the evaluation judges the answer before extension too
            return outcome._replace(before=judged(schema, example, answer.before_extension))
        return outcome

    return evaluate(
        index, candidates(settings.fewshot_k), settings.fewshot_eval_calls, judge,
        lambda: int(calls.get(API_REQUESTS)), seed, predictor.model_version,
        model_version(settings.without_extension(), schema.config_hash, guidance.fingerprint()),
    )
