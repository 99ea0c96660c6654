"""`model_version`: one string that changes whenever the answers could change.

Label Studio skips tasks that already hold a prediction with the current
`model_version`, so it must change with the model, the generation settings, the
prompt wording and the labeling config, and stay the same otherwise (no duplicates).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from .labeling.prompts import PROMPT_VERSION
from .settings import Settings

BACKEND_VERSION = "1.0.0"
"""This backend's release, shown on the status page (bump it with each release)."""


def model_version(
    settings: Settings,
    config_hash: str,
    guidance: str = "",
    examples_bucket: int = 0,
    fewshot_form: str = "",
    region_cuts: Mapping[str, float] | None = None,
) -> str:
    """E.g. `Qwen3-Coder-480B-A35B-Instruct-3f9a1c2e`: readable model name plus a digest.

    `guidance` is the project's instructions fingerprint; `examples_bucket` the size class
    of its example set (see `learning.examples_bucket`), `fewshot_form` how they are shown
    (e.g. `chat-3`; default: `FEWSHOT_EXAMPLES` examples in a block), `region_cuts` the project's
    fitted region cuts (`learning.scorefit.fit_cut`: they leave regions out): all change the answers.
    """
    fields: dict[str, object] = {
        "settings": settings.generation_fingerprint(),
        "prompt": PROMPT_VERSION,
        "config": config_hash,
    }
    if guidance:
        fields["guidance"] = guidance
    fewshot_form = fewshot_form.replace("per-label-", "labels-")  # the old spelling keeps existing projects' versions
    if examples_bucket and fewshot_form and fewshot_form != "0":
        fields["examples"] = [examples_bucket, fewshot_form, settings.fewshot_max_chars]
    elif examples_bucket and settings.fewshot_k and not fewshot_form:
        fields["examples"] = [examples_bucket, settings.fewshot_k, settings.fewshot_max_chars]
    if region_cuts:
        fields["cuts"] = dict(sorted(region_cuts.items()))
    payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:8]
    name = settings.model.rsplit("/", 1)[-1][:60]
    return f"{name}-{digest}"
