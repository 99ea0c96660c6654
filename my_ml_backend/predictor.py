"""Predict a batch of tasks: prompt, one chat call per task, parse, map, validate.

Label Studio sends all selected tasks in one `/predict` and keeps nothing from a
malformed reply, so this returns exactly one prediction per task, in order, and a
task that fails gets an empty prediction instead of failing its batch. Errors that
would repeat for every task (no key, bad key, quota used up …) stop further calls.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .errors import PredictionError, no_text
from .labeling import LabelingSchema
from .llm_client import LLMClient, Usage
from .prompts import CONFIDENCE_KEY, answer_schema, build_prompt, read_texts, wanted_targets
from .reply_parser import parse_reply
from .results import build_results
from .scoring import prediction_score, region_confidence
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """What one batch cost and how it went; logged once per batch."""

    tasks: int = 0
    succeeded: int = 0
    usage: Usage = field(default_factory=Usage)
    errors: Counter[str] = field(default_factory=Counter)


class Predictor:
    """Predicts tasks of one labeling config with one LLM client."""

    def __init__(self, schema: LabelingSchema, settings: Settings, client: LLMClient, model_version: str) -> None:
        self.schema = schema
        self.settings = settings
        self.client = client
        self.model_version = model_version

    def predict_batch(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One prediction per task, in order; never raises for a task's failure."""
        started = time.monotonic()
        stats = BatchStats(tasks=len(tasks))
        fatal: PredictionError | None = None
        predictions = []
        for task in tasks:
            try:
                if fatal is not None:
                    raise fatal
                predictions.append(self.predict_task(task, stats))
                stats.succeeded += 1
            except PredictionError as err:
                if err.fatal:
                    fatal = err
                stats.errors[str(err)] += 1
                logger.debug("Task %s failed: %s", task.get("id"), err)
                predictions.append(self.failed_prediction(err))
        self._log_batch(stats, time.monotonic() - started)
        return predictions

    def predict_task(self, task: dict[str, Any], stats: BatchStats | None = None) -> dict[str, Any]:
        """The prediction for one task; raises `PredictionError` when it cannot be made."""
        data = task.get("data") or {}
        texts, truncated = read_texts(self.schema, data, self.settings.max_input_chars)
        if not texts:
            raise no_text(self.schema.data_keys)
        for name in truncated:
            logger.warning(
                "任务 %s 的文本 %s 超过 %d 字符，已截断 (text truncated to MAX_INPUT_CHARS)",
                task.get("id"), name, self.settings.max_input_chars,
            )
        messages = build_prompt(self.schema, texts)
        wanted = wanted_targets(self.schema, texts)
        logger.debug("Task %s fields: %s", task.get("id"), {k: len(v) for k, v in texts.items()})
        logger.debug("Task %s prompt:\n%s", task.get("id"), messages[-1]["content"])
        reply = self.client.chat(messages, answer_schema(self.schema, texts))
        logger.debug(
            "Task %s reply (%d prompt + %d completion tokens):\n%s",
            task.get("id"), reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.text,
        )
        if stats is not None:
            stats.usage.prompt_tokens += reply.usage.prompt_tokens
            stats.usage.completion_tokens += reply.usage.completion_tokens
        answers = parse_reply(reply.text, [t.name for t in wanted], extras=(CONFIDENCE_KEY,))
        results, answered = build_results(self.schema, answers, texts, lambda v: region_confidence(reply, v))
        if not results:
            logger.debug("Task %s: no valid answer in reply", task.get("id"))
        coverage = answered / len(wanted) if wanted else 0.0
        region_scores = [r["score"] for r in results if "score" in r]
        score = prediction_score(reply, region_scores, coverage, answers)
        prediction = {"result": results, "score": score, "model_version": self.model_version}
        logger.debug("Task %s result: %s", task.get("id"), prediction)
        return prediction

    def failed_prediction(self, err: PredictionError) -> dict[str, Any]:
        """The item for a task that could not be predicted.

        It has no `result` key on purpose: Label Studio then stores nothing for this
        task (and only this task), so the next "Retrieve predictions" tries it again.
        An item with `result: []` would be stored under the current model_version and
        the task would be skipped forever after, e.g. once the user has set the key.
        """
        return {"model_version": self.model_version, "score": 0.0, "error": err.message}

    def _log_batch(self, stats: BatchStats, seconds: float) -> None:
        failed = stats.tasks - stats.succeeded
        logger.info(
            "批次完成 (batch done): %d 个任务, %d 成功, %d 失败, tokens %d+%d, %.2f s",
            stats.tasks, stats.succeeded, failed,
            stats.usage.prompt_tokens, stats.usage.completion_tokens, seconds,
        )
        for message, count in stats.errors.items():
            logger.warning("%s × %d", message, count)
