"""Issue 14: several tasks per call (LLM_TASKS_PER_CALL), against the local OpenAI-compatible server.

The fake model reads the pack prompt as a real one would: it finds each `===== 任务 Tn`
block and answers from that block's own text. The adversarial variants answer out of
order, skip ids, repeat ids or garble answers; no answer may ever land on another task.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from my_ml_backend.labeling import packing
from my_ml_backend.llm.cache import open_cache
from my_ml_backend.llm.client import LLMClient
from my_ml_backend.predicting.factory import schema_for
from my_ml_backend.predicting.predictor import Predictor
from my_ml_backend.settings import Settings
from tests.conftest import TEST_KEY, config
from tests.fake_llm import server as fake

BLOCK = re.compile(r"===== 任务 (T\d+) \(task T\d+\) =====\n(.*?)(?======|\n## )", re.DOTALL)


def label_of(text: str) -> str:
    """The fake model's opinion: the label written into the task's own text."""
    return "正面" if "好" in text else "负面"


def blocks(body: dict) -> list[tuple[str, str]]:
    return BLOCK.findall(body["messages"][-1]["content"])


def answering(mode: str = "honest", log: list[int] | None = None):  # noqa: ANN201
    """A responder: packs answered by id (with a fault), single tasks answered plainly."""

    def respond(body: dict) -> fake.Reply:
        found = blocks(body)
        if log is not None:
            log.append(len(found) or 1)
        if not found:  # a one-task call
            return fake.chat(json.dumps({"sentiment": label_of(body["messages"][-1]["content"])}))
        answers = [(tid, {"sentiment": label_of(text), "_confidence": 0.9}) for tid, text in found]
        if mode == "reversed":
            answers.reverse()
        if mode == "skip" and len(answers) > 1:
            answers = answers[2:]  # the first two tasks are not answered
        if mode == "garble" and len(answers) > 1:
            answers[0] = (answers[0][0], "正面 I think")  # not an object
        if mode == "duplicate" and len(answers) > 1:
            first_id = answers[0][0]
            pairs = [f'"{tid}": {json.dumps(a, ensure_ascii=False)}' for tid, a in answers]
            wrong = json.dumps({"sentiment": "中性"}, ensure_ascii=False)
            return fake.chat("{" + ", ".join([*pairs, f'"{first_id}": {wrong}']) + "}")
        if mode == "list":
            return fake.chat(json.dumps([{"id": tid, **a} for tid, a in answers], ensure_ascii=False))
        if mode == "prose":
            text = "好的，以下是答案：\n```json\n" + json.dumps(dict(answers), ensure_ascii=False) + "\n```"
            return fake.chat(text)
        return fake.chat(json.dumps(dict(answers), ensure_ascii=False))

    return respond


def tasks(n: int) -> list[dict]:
    return [{"id": i, "data": {"text": f"第{i}条评论：{'很好' if i % 3 else '太差了'}，编号{i}"}} for i in range(n)]


def predictor(llm: fake.FakeLLMServer, tmp_path: Path, per_call: int | None, **kw: object) -> Predictor:
    params: dict = {"api_key": TEST_KEY, "base_url": llm.base_url, "model": "Qwen/Test", "timeout": 5.0,
                    "data_dir": tmp_path, "tasks_per_call": per_call, "fewshot_k": 0, "concurrency": 2}
    params.update(kw)
    s = Settings(**params)
    client = LLMClient(s, cache=open_cache(s))
    return Predictor(schema_for(config("text_classification")), s, client, "v-test")


def labels(preds: list[dict]) -> list[str | None]:
    return [p["result"][0]["value"]["choices"][0] if p.get("result") else None for p in preds]


def expected(batch: list[dict]) -> list[str]:
    return [label_of(t["data"]["text"]) for t in batch]


@pytest.mark.parametrize("mode", ["honest", "reversed", "list", "prose"])
def test_a_pack_is_answered_by_id_in_one_call(llm: fake.FakeLLMServer, tmp_path: Path, mode: str) -> None:
    llm.set_responder(answering(mode))
    batch = tasks(8)
    preds = predictor(llm, tmp_path, 8).predict_batch(batch)
    assert labels(preds) == expected(batch)
    assert llm.chat_calls == 1
    assert [t["id"] for t in batch] == list(range(8)) and len(preds) == 8


@pytest.mark.parametrize(("mode", "calls"), [("skip", [8, 2, 1, 1]), ("garble", [8, 1]), ("duplicate", [8, 1])])
def test_missed_or_garbled_tasks_are_asked_again_and_never_cross(
    llm: fake.FakeLLMServer, tmp_path: Path, mode: str, calls: list[int]
) -> None:
    sizes: list[int] = []
    llm.set_responder(answering(mode, sizes))
    batch = tasks(8)
    preds = predictor(llm, tmp_path, 8).predict_batch(batch)
    assert labels(preds) == expected(batch)  # the duplicated id's "中性" reached no task
    # only the missed tasks are asked again, in smaller packs: skip drops 2 of 8, then both of those 2
    assert sizes == calls


def test_the_pack_prompt_keeps_each_task_text_once(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(answering())
    batch = tasks(5)
    predictor(llm, tmp_path, 5).predict_batch(batch)
    body = llm.requests[-1]["body"]
    content = body["messages"][-1]["content"]
    assert [tid for tid, _ in blocks(body)] == ["T1", "T2", "T3", "T4", "T5"]
    for task in batch:
        assert content.count(task["data"]["text"]) == 1
    conversation = json.dumps(body["messages"], ensure_ascii=False)
    assert conversation.count("判断文本的情感倾向") == 1  # the common instructions are sent once
    assert content.count("<<<") == 5  # each text keeps its own delimiters
    assert body["response_format"]["type"] in ("json_schema", "json_object")


def test_per_task_cache_serves_a_regrouped_batch_for_free(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(answering())
    batch = tasks(12)
    predictor(llm, tmp_path, 4).predict_batch(batch[:8])  # two packs of 4
    assert llm.chat_calls == 2
    regrouped = [batch[i] for i in (7, 0, 5, 2, 9, 3, 10, 11, 6)]  # 7 answered, 2 new (9 is new, 10, 11)
    preds = predictor(llm, tmp_path, 8).predict_batch(regrouped)
    assert labels(preds) == expected(regrouped)
    assert llm.chat_calls == 3  # only tasks 9, 10, 11 were asked, in one pack
    assert len(blocks(llm.requests[-1]["body"])) == 3
    # and one task per call finds them too: only task 8, never asked, costs a call
    preds = predictor(llm, tmp_path, 1).predict_batch(batch[:12])
    assert labels(preds) == expected(batch[:12]) and llm.chat_calls == 4
    assert "第8条" in llm.requests[-1]["body"]["messages"][-1]["content"]


def test_auto_sizes_packs_by_the_token_budget(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    sizes: list[int] = []
    llm.set_responder(answering(log=sizes))
    short = tasks(40)
    long = [{"id": 100 + i, "data": {"text": ("好" if i else "差") + "代码" * 900}} for i in range(2)]
    preds = predictor(llm, tmp_path, 0, pack_token_budget=1500).predict_batch(short + long)
    assert labels(preds) == expected(short + long)
    assert sizes.count(1) == 2 and max(sizes) == packing.MAX_PACK  # the long ones alone, short ones 16 a call
    assert sum(sizes) == 42 and len(sizes) <= 5
    assert packing.auto_pack_sizes([10] * 40, 1500, 1024) == [16, 16, 8]
    assert packing.auto_pack_sizes([2000, 10, 10], 1500, 1024) == [1, 2]
    assert packing.auto_pack_sizes([10] * 10, 1500, 96) == [2] * 5  # the answers must fit max_tokens


def test_a_failed_pack_is_split_and_a_fatal_error_stops_all(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(answering())
    llm.enqueue(fake.server_error(502))  # the pack's call fails
    batch = tasks(4)
    preds = predictor(llm, tmp_path, 4, max_retries=0).predict_batch(batch)
    assert labels(preds) == expected(batch) and llm.chat_calls == 3  # 4 → 2 + 2
    llm.reset()
    llm.set_default(fake.auth_failed())
    preds = predictor(llm, tmp_path / "other", 4, concurrency=1).predict_batch(tasks(8))
    assert all("API认证失败" in p["error"] for p in preds) and llm.chat_calls == 1


def test_split_answers_accepts_only_unambiguous_objects() -> None:
    ids = packing.task_ids(3)
    assert packing.split_answers('{"T2": {"a": 1}, "t1": {"a": 2}, "3": {"a": 3}}', ids) == {
        "T1": '{"a": 2}', "T2": '{"a": 1}', "T3": '{"a": 3}'}
    assert packing.split_answers('{"T1": {"a": 1}, "T1": {"a": 2}, "T2": {"a": 3}}', ids) == {"T2": '{"a": 3}'}
    assert packing.split_answers('{"T1": "x", "T4": {"a": 1}, "T2": {}}', ids) == {}
    assert packing.split_answers("<think>{\"T1\": {\"a\": 0}}</think> no json", ids) == {}
    assert packing.split_answers('{"answers": [{"id": "T3", "a": 1}]}', ids) == {"T3": '{"a": 1}'}


MB = 1_000_000
HOSTILE_PACKS = {
    "open braces": "{" * MB,
    "open brackets": "[" * MB,
    "unclosed think": "<think>" * (MB // 7),
    "think then braces": "<think>" + "{" * MB,
    "unterminated string": '{"T1": "' + "x" * MB,
    "open quotes": '{"' * (MB // 2),
    "key chain": '{"T1":' * (MB // 6),
    "id list": '[{"id": "T1", "a": ' * (MB // 20),
    "escaped quotes": '{"T1":"' + '\\"' * (MB // 2),
    "mixed": ('{"T1":[{"b":"{\\"c\\":' * 10 + "<think> [") * (MB // 250),
}


@pytest.mark.parametrize("name", list(HOSTILE_PACKS))
def test_a_hostile_packed_reply_is_split_in_under_100ms(name: str) -> None:
    text = HOSTILE_PACKS[name]
    best = float("inf")
    for _ in range(3):  # best of 3: other processes share the cores
        started = time.perf_counter()
        answers = packing.split_answers(text, packing.task_ids(16))
        best = min(best, time.perf_counter() - started)
    assert isinstance(answers, dict), answers
    assert best < 0.1, (name, best)


def test_think_blocks_before_the_answer_are_skipped_and_deep_nesting_is_no_error() -> None:
    answer = '{"T1": {"a": 1}, "T2": {"a": 2}}'
    ids = packing.task_ids(2)
    assert packing.split_answers("<think>" * 100_000 + answer, ids) == {"T1": '{"a": 1}', "T2": '{"a": 2}'}
    assert packing.split_answers("<think>{[</think>" * 1000 + answer, ids) == {"T1": '{"a": 1}', "T2": '{"a": 2}'}
    assert packing.split_answers("[" * 3000, ids) == {}
    assert packing.split_answers('{"T1": ' * 3000, ids) == {}


def test_pack_messages_wrap_whatever_build_prompt_made() -> None:
    per_task = [
        [{"role": "system", "content": "S"}, {"role": "user", "content": f"intro\n\nshared\n\n<<<\n{t}\n>>>\n\nASK"}]
        for t in ("one", "two", "one")  # twins too: each keeps a part of its own
    ]
    out = packing.pack_messages(per_task, packing.task_ids(3))
    assert out[0] == {"role": "system", "content": "S"}
    text = out[1]["content"]
    assert text.startswith("intro\n\nshared\n\n===== 任务 T1") and text.count("ASK") == 1
    assert "===== 任务 T1 (task T1) =====\n<<<\none\n>>>" in text and "任务 T3 (task T3) =====\n<<<\none" in text
    assert packing.fixed_pack_sizes(10, 4) == [4, 3, 3] and packing.fixed_pack_sizes(0, 4) == []


def test_model_version_changes_with_packing(tmp_path: Path) -> None:
    from my_ml_backend.versioning import model_version

    base = Settings(api_key=TEST_KEY)
    assert model_version(base, "c") == model_version(replace(base, tasks_per_call=1), "c")
    assert model_version(base, "c") != model_version(replace(base, tasks_per_call=8), "c")


def test_tasks_per_call_setting() -> None:
    from my_ml_backend.predicting.predictor import tasks_per_call
    from my_ml_backend.settings import load_settings

    def default_tasks_per_call(url: str) -> int:  # what a predictor for this endpoint does with the setting unset
        return tasks_per_call(load_settings({"MODELSCOPE_API_URL": url}))

    assert load_settings({}).tasks_per_call is None
    assert load_settings({"LLM_TASKS_PER_CALL": "auto"}).tasks_per_call == 0
    assert load_settings({"LLM_TASKS_PER_CALL": "8"}).tasks_per_call == 8
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError, match="LLM_TASKS_PER_CALL"):
            load_settings({"LLM_TASKS_PER_CALL": bad})
    assert default_tasks_per_call("http://127.0.0.1:8000/v1") == 1  # a local server: calls cost nothing
    # metered endpoints too: packing lost 24 points on the real model (bench/RESULTS.md), so it is opt-in
    assert default_tasks_per_call("https://api-inference.modelscope.cn/v1") == 1
    assert default_tasks_per_call("https://dashscope.aliyuncs.com/compatible-mode/v1") == 1


def test_a_pack_too_long_for_the_context_is_split_without_changing_the_output_mode(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    sizes: list[int] = []
    honest = answering(log=sizes)

    def small_context(body: dict) -> fake.Reply:
        if len(blocks(body)) > 2:  # llama.cpp's words for a prompt over n_ctx
            sizes.append(len(blocks(body)))
            return fake.error(400, "Requested tokens (5210) exceed context window of 4096")
        return honest(body)

    llm.set_responder(small_context)
    p = predictor(llm, tmp_path, 8, concurrency=1)
    mode = p.client.mode
    batch = tasks(8)
    assert labels(p.predict_batch(batch)) == expected(batch)
    assert sizes == [8, 4, 4, 2, 2, 2, 2] and p.client.mode == mode


def test_tasks_of_another_language_are_not_packed_together(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(answering())
    batch = tasks(3) + [{"id": 9, "data": {"text": "This product is good, I like it a lot and would buy again"}},
                        {"id": 10, "data": {"text": "Terrible quality, it broke after one day, never again"}}]
    p = predictor(llm, tmp_path, 8)
    plan = p.plan(batch)
    families = {packing.pack_family(plan.prepared[i].ask.messages) for i in range(5)}
    if len(families) == 2:  # the prompt speaks the texts' language: two packs
        assert sorted(map(sorted, plan.groups)) == [[0, 1, 2], [3, 4]]
    else:
        assert plan.groups == [[0, 1, 2, 3, 4]]


def test_each_task_is_scored_on_its_own_tokens(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """With logprobs, a task's score comes from the tokens of its own answer, not its neighbour's."""
    text = '{"T1": {"sentiment": "负面"}, "T2": {"sentiment": "正面"}}'
    pieces = ['{"', 'T1', '":', ' {"', 'sentiment', '":', ' "', '负面', '"},', ' "', 'T2', '":', ' {"', 'sentiment',
              '":', ' "', '正面', '"}}']
    assert "".join(pieces) == text
    logprobs = [(t, -2.0 if t == "负面" else -0.01 if t == "正面" else 0.0) for t in pieces]
    llm.set_default(fake.chat(text, logprobs=logprobs))
    preds = predictor(llm, tmp_path, 2).predict_batch(tasks(2))
    assert labels(preds) == ["负面", "正面"]
    assert preds[0]["score"] < 0.2 < 0.9 < preds[1]["score"]  # exp(-2) vs exp(-0.01)
    shares = packing.split_tokens(logprobs, ["T1", "T2"])
    assert "".join(t for t, _ in shares["T1"]).startswith('T1": {"sentiment": "负面"')
    assert "正面" not in "".join(t for t, _ in shares["T1"])
