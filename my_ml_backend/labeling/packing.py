"""Several tasks in one chat call: the pack prompt and the split of its answer by task id.

Calls are what the free tier counts, and most of a prompt (instructions, labels,
examples, output format) is the same for every task of a project. A pack sends that
once and each task's own part (its texts) once per task, each under an id the model
must echo: `{"T1": {...answer of task 1...}, "T2": {...}}`.

This module wraps whatever `prompts.build_prompt` produces, without knowing its
wording: the lines all tasks of the pack share at the start and at the end of the
user message are the common part, the lines in between are each task's own part.
Tasks whose system messages differ (another language) are never packed together
(`pack_family`). The split trusts nothing: an id answered twice, not answered, or not answered with
an object is left out, and the caller asks that task again; answers are only ever
matched by id, never by position, so they cannot cross between tasks.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .parsing import FINITE_NUMBERS, json_values, without_think

Messages = list[dict[str, str]]

MAX_PACK = 16  # auto packing never puts more tasks than this in one call
ANSWER_TOKENS_PER_TASK = 48  # room kept in max_tokens for each task's answer (auto sizing)
_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def task_ids(n: int) -> list[str]:
    """Ids short enough to cost little and unlike anything in a text: T1 … Tn."""
    return [f"T{i + 1}" for i in range(n)]


def estimate_tokens(text: str) -> int:
    """Rough token count without a tokenizer: one per CJK character, one per 4 other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def auto_pack_sizes(task_tokens: list[int], budget: int, max_tokens: int) -> list[int]:
    """Consecutive pack sizes for tasks of `task_tokens` (their own texts) under a prompt budget.

    Many short reviews share a call; a task larger than the budget goes alone. The
    completion must fit too: at most `max_tokens // ANSWER_TOKENS_PER_TASK` tasks.
    """
    cap = max(1, min(MAX_PACK, (max_tokens or 1024) // ANSWER_TOKENS_PER_TASK))
    sizes: list[int] = []
    count = used = 0
    for tokens in task_tokens:
        if count and (count >= cap or used + tokens > budget):
            sizes.append(count)
            count = used = 0
        count += 1
        used += tokens
    if count:
        sizes.append(count)
    return sizes


def fixed_pack_sizes(n: int, per_call: int) -> list[int]:
    """`n` tasks in packs of `per_call`, the remainder spread so no pack is much smaller."""
    if n <= 0:
        return []
    packs = -(-n // max(1, per_call))
    base, extra = divmod(n, packs)
    return [base + (1 if i < extra else 0) for i in range(packs)]


def _split_paragraphs(contents: list[str]) -> tuple[list[str], list[list[str]], list[str]]:
    """(common head paragraphs, each task's own paragraphs, common tail paragraphs); every own part non-empty.

    Paragraphs (blank-line separated), not lines: a text's delimiters stay with its text.
    """
    lines = [c.split("\n\n") for c in contents]
    shortest = min(len(x) for x in lines)
    head = 0
    while head < shortest and all(x[head] == lines[0][head] for x in lines):
        head += 1
    tail = 0
    while tail < shortest - head and all(x[-1 - tail] == lines[0][-1 - tail] for x in lines):
        tail += 1
    while head and any(len(x) - head - tail <= 0 for x in lines):
        head -= 1  # never leave a task without a part of its own
    own = [x[head : len(x) - tail] for x in lines]
    return lines[0][:head], own, lines[0][len(lines[0]) - tail :] if tail else []


def pack_messages(per_task: list[Messages], ids: list[str]) -> Messages:
    """One conversation asking every task of `per_task` (each as `build_prompt` made it) under its id."""
    if len(per_task) != len(ids) or not per_task:
        raise ValueError("one id per task")
    system = [m for m in per_task[0] if m["role"] == "system"]
    users = ["\n\n".join(m["content"] for m in msgs if m["role"] == "user") for msgs in per_task]
    head, own, tail = _split_paragraphs(users)
    blocks = []
    for task_id, paragraphs in zip(ids, own, strict=True):
        blocks.append(f"===== 任务 {task_id} (task {task_id}) =====\n" + "\n\n".join(paragraphs).strip("\n"))
    shape = ", ".join(f'"{i}": {{…}}' for i in ids)
    listing = "、".join(ids)
    packed = "\n\n".join([*head, *blocks, *tail])
    packed += (
        f"\n\n## 多个任务 (several tasks)\n上面共有 {len(ids)} 个相互独立的任务（{listing}）。"
        "请对每个任务分别按上述要求和格式作答，只输出一个 JSON 对象：键为任务编号，值为该任务的答案对象，"
        "每个编号恰好出现一次，不要合并或遗漏 (answer every task on its own: one json object mapping each "
        f"task id to that task's answer object, every id exactly once):\n{{{shape}}}"
    )
    return [*system, {"role": "user", "content": packed.strip()}]


def pack_family(messages: Messages) -> str:
    """What tasks must share to go in one pack: their system messages (sent once per pack)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "system")


def pack_schema(schemas: list[dict[str, Any] | None], ids: list[str]) -> dict[str, Any] | None:
    """The JSON Schema of a pack's reply: each id's property is its task's own answer schema."""
    if any(s is None for s in schemas):
        return None
    return {
        "type": "object",
        "properties": {task_id: schema for task_id, schema in zip(ids, schemas, strict=True)},
        "required": list(ids),
    }


class _Object(dict):
    """A decoded JSON object that remembers which of its keys came more than once."""

    duplicates: set[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    obj.duplicates = set()
    for key, value in pairs:
        if key in obj:
            obj.duplicates.add(key)
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object, **FINITE_NUMBERS)


def _canonical(key: Any, ids: list[str]) -> str | None:
    text = str(key).strip().strip("#").upper().replace("TASK", "T").replace(" ", "")
    if text.isdigit():
        text = f"T{int(text)}"
    return text if text in ids else None


def split_answers(text: str, ids: list[str]) -> dict[str, str]:
    """Each id's answer object, as JSON text, for ids answered exactly once with an object.

    Accepted shapes: `{"T1": {...}, ...}` (the one asked for), `[{"id": "T1", ...}, ...]`
    and `{"answers": [...]}`; ids may come in any order, as `t1`, `1` or `task 1`.
    """
    for value in json_values(without_think(text), _DECODER, openers="{[", outermost=True):
        answers = _answers_in(value, ids)
        if answers:
            return answers
    return {}


def split_tokens(tokens: list[tuple], ids: list[str]) -> dict[str, list[tuple]]:
    """Each id's share of the answer's (token, logprob, alternatives): from its key `"Tn"` up to the next id's.

    Scores come from the tokens of each answer; in a pack every task has the same
    keys, so each task must only see the tokens of its own answer object.
    """
    joined = "".join(token[0] for token in tokens)
    starts = sorted((pos, i) for i in ids if (pos := joined.find(json.dumps(i))) >= 0)
    out: dict[str, list[tuple]] = {i: [] for _, i in starts}
    offset, current = 0, -1
    for token in tokens:
        while current + 1 < len(starts) and offset >= starts[current + 1][0]:
            current += 1
        if current >= 0:
            out[starts[current][1]].append(token)
        offset += len(token[0])
    return out


def _answers_in(value: Any, ids: list[str]) -> dict[str, str]:
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"answers": [...]}
    seen: dict[str, list[Any]] = {}
    if isinstance(value, dict):
        for key, answer in value.items():
            if (task_id := _canonical(key, ids)) is not None:
                seen.setdefault(task_id, []).append(answer)
                if key in getattr(value, "duplicates", ()):
                    seen[task_id].append(answer)  # the same key twice: ambiguous
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and (task_id := _canonical(item.get("id", ""), ids)) is not None:
                seen.setdefault(task_id, []).append({k: v for k, v in item.items() if k != "id"})
    return {
        task_id: json.dumps(answers[0], ensure_ascii=False)
        for task_id, answers in seen.items()
        if len(answers) == 1 and isinstance(answers[0], dict) and answers[0]
    }
