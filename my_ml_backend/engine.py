"""Build the prediction engine for one labeling config.

The backend's `/setup`, the batch job and the evaluation command must build it the
same way: the batch job posts predictions under the `model_version` the backend would
report, so Label Studio treats both as one model and never predicts a task twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .labeling.controls import OBJECT_TAGS
from .labeling.prompts import PromptGuidance
from .labeling.schema import LabelingSchema, parse_schema
from .learning.events import examples_bucket
from .learning.examples import Example
from .llm.client import shared_client
from .predictor import Predictor
from .settings import Settings
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
    examples: Callable[[], Sequence[Example]] | None = None,
) -> Predictor:
    """Parse the config (offline, cached), fix the version, attach the process-wide LLM client.

    The version counts the examples available now; the batch that follows uses them.
    """
    schema = schema_for(label_config)
    guidance = guidance or PromptGuidance(settings.instructions, settings.output_language, settings.reasoning)
    bucket = examples_bucket(len(examples())) if examples is not None and settings.fewshot_k else 0
    version = model_version(settings, schema.config_hash, guidance.fingerprint(), bucket)
    return Predictor(schema, settings, shared_client(settings), version, guidance, examples)
