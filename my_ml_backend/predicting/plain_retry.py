"""A JSON answer that names no choice, asked once more the plain way (`LLM_RETRY_PLAIN`).

A model that no grammar holds to the label list sometimes answers with a word of its own ("movies" for
entertainment, "满意" for 正面) that is close to no choice by spelling. Asked llm_interactive's plain
question (`labeling.free_text`), the same model names a listed choice far more often, and its reply is
matched to the closest choice whatever it says. So the task gets a pre-label at the cost of one extra
call, only for those tasks. Where the plain reply names nothing either, the task stays empty and the
log says why.
"""

from __future__ import annotations

import logging

from ..labeling.answers import TaskAnswer
from ..llm.errors import PredictionError
from ..telemetry.metrics import Tally
from .prepare import PreparedTask, asked_plain, plain_askable
from .strategies import Outcome, SingleCalls

logger = logging.getLogger(__name__)


class PlainRetry:
    """Asks the plain question for a task whose single choice went unanswered; shared by a predictor's threads."""

    def __init__(self, calls: SingleCalls, enabled: bool) -> None:
        self.calls, self.enabled = calls, enabled

    def applies(self, task: PreparedTask, outcome: Outcome) -> bool:
        """An answered-nothing JSON reply to a task a plain answer can fill."""
        return self.enabled and isinstance(outcome, TaskAnswer) and not outcome.answered and plain_askable(task)

    def answer(self, task: PreparedTask, outcome: Outcome, deadline: float | None, tally: Tally | None) -> Outcome:
        """The plain answer where it names a choice; else `outcome` as it was (a failed call included)."""
        if not self.applies(task, outcome):
            return outcome
        task_id = task.task.get("id")
        logger.info("任务 %s 的 JSON 答案不是任何选项，改用纯文本再问一次 (task %s: the JSON answer named no choice; "
                    "asked once more the plain way)", task_id, task_id)
        try:
            again = self.calls.answer(asked_plain(task), deadline, tally, extend=False)
        except PredictionError as err:
            logger.info("任务 %s 纯文本重问失败，不预标注 (task %s: the plain retry failed, no pre-label): %s",
                        task_id, task_id, err)
            return outcome
        if not again.answered:
            logger.info("任务 %s 两次回答都不接近任何选项，不预标注 (task %s: neither answer is close to any choice: "
                        "left without a pre-label)", task_id, task_id)
            return outcome
        return again  # scored as the free-text strategy scores it: on our sets these rank better than halved
