"""Answer several tasks with one chat call, and each task from its own cache entry.

The prompt wording and the answer split belong to the labeling layer (`labeling.packing`,
passed in as `PackFormat`); this module decides what is sent: tasks already answered
(as one-task calls or in any earlier pack) come from the cache for free, the rest go
in packs, and a pack whose answer misses or garbles some tasks asks only those again,
in packs half the size, down to one task per call, as long as the deadline allows.
Each task's part of a packed answer is stored under the key of that task's one-task
call, so a later batch grouped differently (or not packed at all) pays nothing for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..telemetry.metrics import Tally
from .client import LLMClient
from .errors import ErrorKind, PredictionError, deadline_reached
from .replies import ChatReply, Usage, worth_keeping

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]

class PackFormat(Protocol):
    """How tasks are put into one prompt and their answers taken out (`labeling.packing`)."""

    def task_ids(self, n: int) -> list[str]: ...

    def pack_messages(self, per_task: list[Messages], ids: list[str]) -> Messages: ...

    def pack_schema(self, schemas: list[dict[str, Any] | None], ids: list[str]) -> dict[str, Any] | None: ...

    def split_answers(self, text: str, ids: list[str]) -> dict[str, str]: ...

    def split_tokens(self, tokens: list[tuple[str, float]], ids: list[str]) -> dict[str, list[tuple[str, float]]]: ...

    def fixed_pack_sizes(self, n: int, per_call: int) -> list[int]: ...


@dataclass
class Ask:
    """One task's one-task call: what a pack must answer for it."""

    messages: Messages
    schema: dict[str, Any] | None
    accept: Callable[[ChatReply], bool] | None = None  # does a reply give this task a usable answer?


def answer_pack(
    client: LLMClient,
    asks: list[Ask],
    fmt: PackFormat,
    *,
    deadline: float | None = None,
    tally: Tally | None = None,
) -> list[ChatReply | PredictionError]:
    """One reply (or the error that stopped it) per ask, in order; the asks share as few calls as they can.

    Fatal errors (no key, quota used up …) and the deadline end the pack at once;
    other failures of a packed call (a timeout, a garbled reply) send its tasks
    round again in smaller packs.
    """
    results: list[ChatReply | PredictionError | None] = [None] * len(asks)
    todo = list(range(len(asks)))
    size = len(asks)
    while todo:
        if deadline is not None and time.monotonic() >= deadline:
            for i in todo:
                results[i] = deadline_reached()
            break
        missed: list[int] = []
        start = 0
        for n in fmt.fixed_pack_sizes(len(todo), size):
            group, start = todo[start : start + n], start + n
            missed += _ask_group(client, asks, group, fmt, results, deadline, tally)
        if missed:
            logger.info("打包回答缺少 %d 个任务，重新询问 (packed answer missed %d tasks: asking again)",
                        len(missed), len(missed))
        todo, size = missed, max(1, min(size, len(todo)) // 2)  # smaller than the largest pack just sent
    return [r if r is not None else deadline_reached() for r in results]


def _ask_group(
    client: LLMClient,
    asks: list[Ask],
    group: list[int],
    fmt: PackFormat,
    results: list[ChatReply | PredictionError | None],
    deadline: float | None,
    tally: Tally | None,
) -> list[int]:
    """Ask `group` (one call), fill `results`; returns the tasks to ask again."""
    if len(group) == 1:  # one task: the ordinary call, cached under its own key
        ask = asks[group[0]]
        try:
            results[group[0]] = client.chat(ask.messages, ask.schema, deadline=deadline, accept=ask.accept,
                                            tally=tally)
        except PredictionError as err:
            results[group[0]] = err
        return []
    ids = fmt.task_ids(len(group))
    messages = fmt.pack_messages([asks[i].messages for i in group], ids)
    schema = fmt.pack_schema([asks[i].schema for i in group], ids)
    try:
        # a pack's own answer is never cached: its tasks' parts are, each under its own key
        reply = client.chat(messages, schema, deadline=deadline, accept=lambda _r: False, tally=tally,
                            tasks=len(group))
    except PredictionError as err:
        if err.fatal or err.kind == ErrorKind.DEADLINE:
            for i in group:
                results[i] = err
            return []
        logger.info("打包调用失败，拆小重试 (packed call failed, retrying smaller): %s", err)
        return list(group)
    parts = fmt.split_answers(reply.text, ids)
    tokens = fmt.split_tokens(reply.tokens, ids) if reply.tokens else {}
    share = Usage(reply.usage.prompt_tokens // len(group), reply.usage.completion_tokens // len(group))
    missed = []
    for task_id, i in zip(ids, group, strict=True):
        text = parts.get(task_id)
        part = ChatReply(text=text or "", usage=share, tokens=tokens.get(task_id, []), mode=reply.mode,
                         model=reply.model)
        if text and worth_keeping(asks[i].accept, part):
            client.cache_reply(asks[i].messages, asks[i].schema, part)  # under the task's own one-task key
            results[i] = part
        else:
            missed.append(i)
    return missed


def plan_packs(
    client: LLMClient,
    asks: dict[int, Ask],
    sizes: Callable[[list[int]], list[int]],
    family: Callable[[Messages], str],
    tally: Tally | None = None,
) -> tuple[dict[int, ChatReply], list[list[int]]]:
    """(answers the cache already holds, the other tasks grouped in order by `sizes`) for `asks`.

    Only tasks of one `family` (same system messages) share a pack; `sizes` gets the
    indices of one family still to ask and returns the pack sizes for them.
    """
    cached: dict[int, ChatReply] = {}
    pending: dict[str, list[int]] = {}
    for i, ask in asks.items():
        if (reply := client.cached_reply(ask.messages, ask.schema, tally)) is not None:
            cached[i] = reply
        else:
            pending.setdefault(family(ask.messages), []).append(i)
    groups: list[list[int]] = []
    for members in pending.values():
        start = 0
        for n in sizes(members):
            groups.append(members[start : start + n])
            start += n
    return cached, groups
