"""How a batch's prepared tasks are asked: one call per task, or several tasks packed into one call.

Both strategies answer the same contract: `plan` says which tasks are already answered (the cache) and how
the rest are grouped; `run` asks one group and returns one outcome per task, each reply read once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from ..labeling import extension, packing
from ..labeling.answers import TaskAnswer
from ..labeling.scoring import Tokens
from ..llm.client import LLMClient
from ..llm.errors import PredictionError, unexpected_error
from ..llm.packed import answer_pack, plan_packs
from ..llm.replies import ChatReply
from ..telemetry.metrics import Tally
from .prepare import PreparedTask

logger = logging.getLogger(__name__)

Outcome = TaskAnswer | PredictionError
Plan = tuple[dict[int, Outcome], list[list[int]]]  # (outcomes known without a call, the groups to ask)


class AskStrategy(Protocol):
    def plan(self, prepared: dict[int, PreparedTask], tally: Tally | None) -> Plan: ...

    def run(
        self, prepared: dict[int, PreparedTask], group: list[int], deadline: float | None, tally: Tally | None
    ) -> list[Outcome]: ...


def safely(task_id: object, make: Callable[[], TaskAnswer]) -> Outcome:
    """`make()` for one task; its failure, even a bug, is that task's error and never its group's or batch's."""
    try:
        return make()
    except PredictionError as err:
        return err
    except Exception:  # noqa: BLE001 - logged with its traceback; the task gets "internal error"
        logger.exception("Task %s: unexpected error", task_id)
        return unexpected_error()


def group_outcomes(future: Future, n: int) -> list[Outcome]:
    """The outcomes a group's future returned, or its failure repeated for each of its `n` tasks."""
    try:
        return future.result()
    except PredictionError as err:
        return [err] * n
    except Exception:  # noqa: BLE001 - a bug must cost its group, not the batch
        logger.exception("Group of %d tasks: unexpected error", n)
        return [unexpected_error()] * n


def read_logged(prepared: PreparedTask, reply: ChatReply, max_tokens: int) -> TaskAnswer:
    """The reply's answer, with what the debug log shows of it."""
    task_id = prepared.task.get("id")
    logger.debug("Task %s reply (%d prompt + %d completion tokens%s, model %s):\n%s", task_id,
                 reply.usage.prompt_tokens, reply.usage.completion_tokens, ", cached" if reply.cached else "",
                 reply.model or "-", reply.text)
    if reply.truncated:
        logger.warning("任务 %s 的回复在 LLM_MAX_TOKENS=%s 处被截断，只保留完整的部分 (task %s: reply cut at "
                       "LLM_MAX_TOKENS, its complete items kept; a small model may be looping)",
                       task_id, max_tokens, task_id)
    answer = prepared.read(reply)
    if not answer.answered:
        logger.debug("Task %s: no valid answer in reply", task_id)
    return answer


class SingleCalls:
    """One chat call per task (the client's cache answers repeats); a list closed in doubt may be asked again."""

    def __init__(self, client: LLMClient, max_tokens: int, extend_below: float) -> None:
        self.client, self.max_tokens = client, max_tokens
        # LLM_EXTEND_LISTS where it can work; 0 once the endpoint is seen to ignore minItems
        self.extend_below = extend_below

    def plan(self, prepared: dict[int, PreparedTask], tally: Tally | None) -> Plan:
        return {}, [[i] for i in prepared]

    def run(
        self, prepared: dict[int, PreparedTask], group: list[int], deadline: float | None, tally: Tally | None
    ) -> list[Outcome]:
        task = prepared[group[0]]
        return [safely(task.task.get("id"), lambda: self.answer(task, deadline, tally))]

    def answer(
        self, task: PreparedTask, deadline: float | None, tally: Tally | None, extend: bool = True
    ) -> TaskAnswer:
        """The task's answer; raises `PredictionError`. No request starts after `deadline`; one already sent
        finishes, so its answer reaches the cache and the next retrieve gets it for free."""
        ask = task.ask
        reply = self.client.chat(ask.messages, ask.schema, deadline=deadline, accept=ask.accept, tally=tally)
        answer = read_logged(task, reply, self.max_tokens)
        if not (extend and self.extend_below and reply.tokens and reply.mode in extension.ENFORCING_MODES
                and not reply.truncated):  # a doubt is read from logprobs: none came back, nothing to extend
            return answer

        def again(schema: dict) -> tuple[TaskAnswer, Tokens] | None:
            """The same prompt, its doubtful lists made to go on; None when that call fails or is not enforced."""
            logger.debug("Task %s: lists closed in doubt asked to go on: %s", task.task.get("id"),
                         {k: v["minItems"] for k, v in schema["properties"].items() if "minItems" in v})
            try:
                more = self.client.chat(ask.messages, schema, deadline=deadline, accept=ask.accept, tally=tally)
            except PredictionError as err:
                logger.info("任务 %s 补充请求失败，保留原答案 (extension call failed): %s", task.task.get("id"), err)
                return None
            if more.truncated:  # made to go on, it looped to LLM_MAX_TOKENS: nothing to trust in it
                return None
            grown = read_logged(task, more, self.max_tokens)
            if not extension.enforced(schema, grown.list_lengths):
                self.extend_below = 0.0  # this endpoint ignores minItems: every further extension would be wasted
                logger.warning("端点未执行 minItems，不再补充列表 (endpoint ignored minItems: lists not extended)")
                return None
            return grown, more.tokens

        return extension.extend(answer, reply.tokens, ask.schema, len(task.wanted), again, self.extend_below)


class PackedCalls:
    """Several tasks per chat call (`LLM_TASKS_PER_CALL`): cached tasks are free, the rest go in packs."""

    def __init__(self, client: LLMClient, max_tokens: int, per_call: int, token_budget: int) -> None:
        self.client, self.max_tokens = client, max_tokens
        self.per_call, self.token_budget = per_call, token_budget  # per_call 0: sized by the token budget

    def plan(self, prepared: dict[int, PreparedTask], tally: Tally | None) -> Plan:
        def sizes(pending: list[int]) -> list[int]:
            if self.per_call >= 1:
                return packing.fixed_pack_sizes(len(pending), self.per_call)
            return packing.auto_pack_sizes([prepared[i].tokens for i in pending], self.token_budget, self.max_tokens)

        asks = {i: p.ask for i, p in prepared.items()}
        cached, groups = plan_packs(self.client, asks, sizes, packing.pack_family, tally)
        ready: dict[int, Outcome] = {
            i: safely(prepared[i].task.get("id"), lambda i=i, reply=reply: self._read(prepared[i], reply))
            for i, reply in cached.items()
        }
        return ready, groups

    def run(
        self, prepared: dict[int, PreparedTask], group: list[int], deadline: float | None, tally: Tally | None
    ) -> list[Outcome]:
        replies = answer_pack(self.client, [prepared[i].ask for i in group], packing, deadline=deadline, tally=tally)
        return [reply if isinstance(reply, PredictionError)
                else safely(prepared[i].task.get("id"), lambda i=i, reply=reply: self._read(prepared[i], reply))
                for i, reply in zip(group, replies, strict=True)]

    def _read(self, task: PreparedTask, reply: ChatReply) -> TaskAnswer:
        return read_logged(task, reply, self.max_tokens)
