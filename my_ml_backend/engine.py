"""Build the prediction engine for one labeling config.

The backend's `/setup` and the command-line batch job must build it the same way:
the batch job posts predictions under the `model_version` the backend would report,
so Label Studio treats both as one model and never predicts a task twice.
"""

from __future__ import annotations

from .controls import OBJECT_TAGS
from .labeling import parse_schema
from .llm_client import shared_client
from .predictor import Predictor
from .settings import Settings
from .versioning import model_version

EMPTY_CONFIG = "<View></View>"


def build_predictor(label_config: str | None, settings: Settings) -> Predictor:
    """Parse the config (offline, cached) and attach the process-wide LLM client."""
    schema = parse_schema(label_config or EMPTY_CONFIG, OBJECT_TAGS)
    version = model_version(settings, schema.config_hash)
    return Predictor(schema, settings, shared_client(settings), version)
