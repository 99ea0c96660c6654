"""`model_version`: one string that changes whenever the answers could change.

Label Studio skips tasks that already hold a prediction with the current
`model_version`, so it must change with the model, the generation settings, the
prompt wording and the labeling config, and stay the same otherwise (no duplicates).
"""

from __future__ import annotations

import hashlib
import json

from .prompts import PROMPT_VERSION
from .settings import Settings


def model_version(settings: Settings, config_hash: str) -> str:
    """E.g. `Qwen3-Coder-480B-A35B-Instruct-3f9a1c2e`: readable model name plus a digest."""
    payload = json.dumps(
        {"settings": settings.generation_fingerprint(), "prompt": PROMPT_VERSION, "config": config_hash},
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:8]
    name = settings.model.rsplit("/", 1)[-1][:60]
    return f"{name}-{digest}"
