"""Build the prediction engine for one labeling config.

The backend's `/setup`, the batch job and the evaluation command must build it the
same way: the batch job posts predictions under the `model_version` the backend would
report, so Label Studio treats both as one model and never predicts a task twice.
The automatic few-shot evaluation predicts through the same engine, so what it
measures is what the project gets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .labeling.controls import OBJECT_TAGS
from .labeling.prompts import PromptGuidance
from .labeling.schema import LabelingSchema, parse_schema
from .learning.autotune import Choice, EvaluationAborted, Judged, candidates, evaluate, stored_choice
from .learning.events import examples_bucket
from .learning.examples import Example, answers_from_results, region_pairs
from .learning.index import ExampleIndex
from .learning.retrieval import Form, Shots
from .learning.store import open_example_store
from .llm.batch_stats import BatchStats
from .llm.client import shared_client
from .llm.errors import PredictionError
from .predictor import Predictor, PromptInputs
from .settings import Settings
from .telemetry.metrics import API_REQUESTS
from .versioning import model_version

EMPTY_CONFIG = "<View></View>"


CACHED_CONFIG_CHARS = 50_000  # larger configs (~80 B of RAM per char parsed) are not kept by the parse cache


def schema_for(label_config: str | None) -> LabelingSchema:
    """The parsed config (cached per config text, up to CACHED_CONFIG_CHARS).

    A large config stays parsed only as long as the server's model registry keeps its
    model: the 64-entry parse cache would otherwise hold any number of them.
    """
    if label_config and len(label_config) > CACHED_CONFIG_CHARS:
        return parse_schema.__wrapped__(label_config, OBJECT_TAGS)
    return parse_schema(label_config or EMPTY_CONFIG, OBJECT_TAGS)


def build_predictor(
    label_config: str | None,
    settings: Settings,
    guidance: PromptGuidance | None = None,
    examples: Callable[[], Shots | None] | None = None,
    count: int = 0,
    form: Form | None = None,
    choice: Choice | None = None,
) -> Predictor:
    """Parse the config (offline, cached), fix the version, attach the process-wide LLM client.

    The version counts the examples available now (`count`, from the store) and names
    the form they are shown in; the batch that follows uses them. `choice`: the project's
    few-shot evaluation, whose score maps rescale the scores if they were fitted on this
    model, prompt, config and guidance (the zero-shot version is what the evaluation ran as), and its
    region cuts leave low-scored regions of list answers out (under a version of their own).
    """
    schema = schema_for(label_config)
    if choice is not None and choice.extend is False:  # the project's annotations turned list extension off
        settings = settings.without_extension()
    guidance = guidance or PromptGuidance(settings.instructions, settings.output_language, settings.reasoning)
    form = form or Form(settings.fewshot_k, settings.fewshot_form)
    bucket = examples_bucket(count) if examples is not None and form.k else 0
    maps = choice.fitted(model_version(settings, schema.config_hash, guidance.fingerprint())) if choice else None
    cuts = maps.cuts if maps is not None else None  # regions left out: other answers, another version
    version = model_version(settings, schema.config_hash, guidance.fingerprint(), bucket, form.name, cuts)
    return Predictor(schema, settings, shared_client(settings), version, guidance, examples, maps)


def project_choice(label_config: str | None, settings: Settings, project: int | str) -> Choice | None:
    """The project's stored few-shot evaluation, for the batch job and its workers: its score maps make their
    scores mean what `/predict`'s do (one model_version, one Data Manager column, one sort order)."""
    if not settings.fewshot_auto:
        return None
    store = open_example_store(settings)
    return stored_choice(store, str(project), schema_for(label_config).config_hash) if store is not None else None


def task_of(schema: LabelingSchema, example: Example) -> dict:
    """An annotated example back as a task (its texts under the config's data keys)."""
    data = {s.data_key: example.texts[s.name] for s in schema.sources if s.name in example.texts}
    return {"id": example.task_id, "data": data}


def _same(guess: object, gold: object) -> bool:
    """Equal answers; a multiple choice in any order."""
    if isinstance(guess, list) and isinstance(gold, list):
        return sorted(map(str, guess)) == sorted(map(str, gold))
    return guess == gold


def choose_form(
    label_config: str | None, settings: Settings, guidance: PromptGuidance, index: ExampleIndex, seed: int = 0
) -> Choice:
    """`FEWSHOT_EXAMPLES=auto`: leave-one-out accuracy of each candidate form on the project's annotations,
    and the score maps fitted on the chosen form's predictions (raw scores: this predictor has no map)."""
    schema = schema_for(label_config)
    settings = dataclasses.replace(settings, batch_deadline=24 * 3600.0)
    predictor = build_predictor(label_config, settings, guidance)
    predictor.before = {}  # a task's answer before list extension: the evaluation judges both
    stats = BatchStats()

    def judged(example: Example, prediction: dict) -> Judged:
        got = answers_from_results(schema, prediction["result"])
        ok = all(_same(got.get(name), answer) for name, answer in example.answers.items())
        return Judged(ok, prediction.get("score"), region_pairs(schema, prediction["result"], example.answers))

    def judge(example: Example, form: Form) -> Judged:
        shots = Shots(index, form, settings.fewshot_max_chars) if form.k else None
        try:
            prediction = predictor.predict_task(task_of(schema, example), stats, None, PromptInputs(guidance, shots))
        except PredictionError as err:
            if err.fatal:  # no key, quota out ...: every further judgement would fail the same way
                raise EvaluationAborted(err.message) from err
            return Judged(False, error=True)
        before = predictor.before.pop(example.task_id, None)
        outcome = judged(example, prediction)
        return outcome._replace(before=judged(example, before)) if before is not None else outcome

    return evaluate(
        index, candidates(settings.fewshot_k), settings.fewshot_eval_calls, judge,
        lambda: int(stats.calls.get(API_REQUESTS)), seed, predictor.model_version,
        model_version(settings.without_extension(), schema.config_hash, guidance.fingerprint()),
    )
