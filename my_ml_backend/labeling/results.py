"""Turn parsed answers into Label Studio results that validate against the config.

Every region is built from the config's own control and object names and checked
with `LabelInterface.validate_region` before it leaves; an invalid region is dropped
alone, so one bad answer never costs the task its other labels.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from .controls import HANDLERS
from .schema import LabelingSchema, Target

logger = logging.getLogger(__name__)


def build_results(
    schema: LabelingSchema,
    answers: dict[str, Any],
    texts: dict[str, str],
    score: Callable[[Target, dict[str, Any]], float | None] | None = None,
) -> tuple[list[dict], int]:
    """Results for the answered targets, and how many targets got at least one valid region.

    `score(target, value)`, when given, supplies a per-region score (see `scoring`).
    """
    results: list[dict] = []
    answered = 0
    for target in schema.targets:
        if target.name not in answers:
            continue
        to_names = [s.name for s in target.sources if s.name in texts]
        if not to_names:
            continue
        regions = []
        text = texts[to_names[0]]
        for value in HANDLERS[target.tag].to_values(target, answers[target.name], text):
            region = {
                "id": uuid.uuid4().hex[:10],
                "from_name": target.name,
                "to_name": to_names[0],
                "type": target.control.tag.lower(),
                "value": value,
            }
            errors = schema.interface.validate_region(region, return_errors=True)
            if errors:
                logger.debug("Dropped invalid region for %s: %s", target.name, errors)
                continue
            if score is not None and (value_score := score(target, value)) is not None:
                region["score"] = round(value_score, 4)
            regions.append(region)
        if regions:
            answered += 1
            results.extend(regions)
        else:
            logger.debug("No valid answer for %s in %r", target.name, answers[target.name])
    return results, answered
