"""Build the predictor of one labeling config: the backend's `/setup`, the batch job and the evaluation alike.

The batch job posts predictions under the `model_version` the backend would report, so Label Studio
treats both as one model and never predicts a task twice.
"""

from __future__ import annotations

import logging
from typing import Any

from ..labeling.controls import OBJECT_TAGS
from ..labeling.prompts import PromptGuidance, project_params
from ..labeling.schema import LabelingSchema, parse_schema
from ..learning.autotune import FewShotEvaluation, stored_evaluation
from ..learning.events import examples_bucket
from ..learning.retrieval import ExampleSource, FewShotForm
from ..learning.store import open_example_store
from ..llm.client import shared_client
from ..settings import Settings
from ..versioning import model_version
from .predictor import Predictor

logger = logging.getLogger(__name__)

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
    examples: ExampleSource | None = None,
    count: int = 0,
    form: FewShotForm | None = None,
    evaluation: FewShotEvaluation | None = None,
    min_score: float | None = None,
) -> Predictor:
    """Parse the config (offline, cached), fix the version, attach the process-wide LLM client.

    The version counts the examples available now (`count`, from the store) and names the form they are
    shown in. `evaluation`: the project's evaluation, whose answer strategy is used (under LLM_ANSWER_STRATEGY=auto),
    whose score maps rescale the scores if they
    were fitted on this model, prompt, config and guidance, and whose region cuts leave low-scored regions
    of list answers out (under a version of their own). `min_score`: the project's, in place of LLM_MIN_SCORE.
    """
    schema = schema_for(label_config)
    if min_score is not None and min_score != settings.min_score:
        settings = settings.with_changes(min_score=min_score)
    if evaluation is not None and evaluation.extend is False:  # the project's annotations turned extension off
        settings = settings.without_extension()
    if evaluation is not None and evaluation.strategy and settings.answer_strategy == "auto":
        settings = settings.with_changes(answer_strategy=evaluation.strategy)  # what its annotations chose
    guidance = guidance or PromptGuidance(settings.instructions, settings.output_language, settings.reasoning)
    form = form or FewShotForm(settings.fewshot_k, settings.fewshot_form)
    bucket = examples_bucket(count) if examples is not None and form.k else 0
    fingerprint = guidance.fingerprint()
    # the maps were fitted on scores, which the minimum only reads: looked up under the version without it
    unbounded = settings.with_changes(min_score=0.0)
    maps = evaluation.fitted(model_version(unbounded, schema.config_hash, fingerprint)) if evaluation else None
    cuts = maps.cuts if maps is not None else None  # regions left out: other answers, another version
    version = model_version(settings, schema.config_hash, fingerprint, bucket, form.name, cuts)
    return Predictor(schema, settings, shared_client(settings), version, guidance, examples, maps)


def project_evaluation(label_config: str | None, settings: Settings, project: int | str) -> FewShotEvaluation | None:
    """The project's stored few-shot evaluation, for the batch job and its workers: its score maps make their
    scores mean what `/predict`'s do (one model_version, one Data Manager column, one sort order)."""
    if not settings.evaluates_projects:
        return None
    store = open_example_store(settings)
    return stored_evaluation(store, str(project), schema_for(label_config).config_hash) if store is not None else None


def project_min_score(extra_params: Any) -> float | None:
    """The project's `min_score` Extra param (0–1), read like its instructions; None when absent or not a number."""
    value = project_params(extra_params).get("min_score")
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not 0.0 <= number <= 1.0:
        logger.warning("项目参数 min_score=%r 无效，应为 0 到 1 (project min_score must be 0-1): ignored", value)
        return None
    return number
