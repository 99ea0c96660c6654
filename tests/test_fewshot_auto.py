"""FEWSHOT_EXAMPLES=auto through the backend's HTTP API, against scripted models on the fake LLM server.

A model HURT by examples answers right without them and wrong with them; a model HELPED
by examples does the opposite. The backend, measuring on the project's own annotations
(sent as webhooks), must choose zero-shot for the first and a form with examples for the
second, say so in /metrics, predict accordingly, and keep the choice across a restart.
An explicit count is obeyed as given.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY, Backend
from tests.fake_llm import server as fake

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="正面"/><Choice value="负面"/></Choices>
</View>"""
PROJECT = "1.1700000000"
WORDS = ["物流", "包装", "质量", "客服", "价格", "屏幕", "电池", "味道", "尺码", "做工", "发货", "颜色"]
ANNOTATED = {f"{WORDS[i % 12]}{WORDS[(i * 5) % 12]}，第{i}条评论": "正面" if i % 2 else "负面" for i in range(16)}
NEW_TASK = "物流包装，一条新评论"
TRUTH = {**ANNOTATED, NEW_TASK: "正面"}


def task_text(messages: list[dict]) -> str:
    found = re.search(r"<<<\n(.*?)\n>>>", messages[-1]["content"], re.S)
    assert found, messages[-1]["content"]
    return found.group(1)


def shows_examples(messages: list[dict]) -> bool:
    return len(messages) > 2 or "示例 1" in messages[-1]["content"]


def scripted(examples_help: bool) -> Callable[[dict], fake.Reply]:
    """A model that is right exactly when examples are shown (`examples_help`) or exactly when not."""

    def reply(body: dict) -> fake.Reply:
        messages = body["messages"]
        truth = TRUTH[task_text(messages)]
        right = shows_examples(messages) == examples_help
        answer = truth if right else ("负面" if truth == "正面" else "正面")
        return fake.chat(json.dumps({"sentiment": answer}, ensure_ascii=False))

    return reply


def start(llm: fake.FakeLLMServer, tmp: Path, **env: str) -> Backend:
    # the few-shot forms alone: the answer strategy's own choice is tested in test_answer_strategy.py
    base = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CACHE": "off",
            "LLM_ANSWER_STRATEGY": "structured"}
    return Backend({**base, **env}, tmp)


def metrics(backend: Backend) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(backend.url + "/metrics", timeout=30) as resp:
        lines = resp.read().decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def setup(backend: Backend, config: str = CONFIG) -> str:
    return backend.setup(config, PROJECT)


def post_annotation(backend: Backend, n: int, text: str, result: list[dict], config: str = CONFIG) -> None:
    """Label Studio's ANNOTATION_CREATED webhook for task and annotation `n`."""
    status, body = backend.post("/webhook", {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": n, "task": n, "result": result, "was_cancelled": False},
        "task": {"id": n, "data": {"text": text}},
        "project": {"id": 1, "label_config": config},
    })
    assert status == 201, body


def annotate(backend: Backend) -> None:
    for n, (text, label) in enumerate(ANNOTATED.items(), start=1):
        result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
        post_annotation(backend, n, text, result)


def settle(backend: Backend, llm: fake.FakeLLMServer, config: str = CONFIG) -> dict[str, float]:
    """Wait until the evaluations due (bucket crossings, /setup) have run and no new one starts."""
    deadline = time.monotonic() + 60
    last, stable = (-1.0, -1), 0
    while time.monotonic() < deadline:
        setup(backend, config)  # starts the evaluation of the current bucket if it has not run yet
        found = metrics(backend)
        now = (found.get("ml_backend_fewshot_evaluations_total", 0.0), llm.chat_calls)
        stable = stable + 1 if now == last and now[0] > 0 else 0
        if stable >= 4:
            return found
        last = now
        time.sleep(0.5)
    raise AssertionError(f"evaluations did not settle: {backend.logs()[-3000:]}")


def chosen(found: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in found.items() if k.startswith('ml_backend_fewshot_examples{')}


@pytest.mark.parametrize("examples_help", [False, True], ids=["hurt-by-examples", "helped-by-examples"])
def test_auto_chooses_from_the_projects_own_annotations(
    llm: fake.FakeLLMServer, tmp_path: Path, examples_help: bool
) -> None:
    llm.set_responder(scripted(examples_help))
    backend = start(llm, tmp_path, FEWSHOT_EVAL_CALLS="40")
    try:
        zero_shot = setup(backend)
        assert llm.chat_calls == 0  # /setup never calls the model
        annotate(backend)
        found = settle(backend, llm)
        calls = llm.chat_calls
        assert 0 < calls <= 40 * found["ml_backend_fewshot_evaluations_total"]
        assert found["ml_backend_fewshot_eval_calls_total"] == calls  # every call of the evaluation counted
        accuracy = {k: v for k, v in found.items() if k.startswith("ml_backend_fewshot_eval_accuracy")}
        assert accuracy['ml_backend_fewshot_eval_accuracy{form="0",project="1"}'] == (0.0 if examples_help else 1.0)
        assert len(accuracy) == 4, accuracy  # zero-shot and three forms with examples
        [(gauge, k)] = chosen(found).items()
        log = [line for line in backend.logs().splitlines() if "project evaluation" in line]
        assert log and "calls" in log[-1] and "accuracy on" in log[-1]

        predictions = backend.predict(CONFIG, [{"id": 999, "data": {"text": NEW_TASK}}], PROJECT)
        sent = llm.requests[-1]["body"]["messages"]
        assert predictions[0]["result"][0]["value"]["choices"] == ["正面"]  # the better choice was made
        version = setup(backend)
        if examples_help:
            assert k > 0 and 'form="0"' not in gauge and shows_examples(sent) and version != zero_shot
        else:  # no examples shown: no new version, no re-prediction
            assert k == 0 and 'form="0"' in gauge and not shows_examples(sent) and version == zero_shot
    finally:
        backend.stop()

    # The choice is kept in the store: another worker, or this one restarted, uses it without new calls.
    calls = llm.chat_calls
    restarted = start(llm, tmp_path, FEWSHOT_EVAL_CALLS="40")
    try:
        assert setup(restarted) == version
        time.sleep(1)
        assert llm.chat_calls == calls
        restarted.predict(CONFIG, [{"id": 999, "data": {"text": NEW_TASK}}], PROJECT)
        assert shows_examples(llm.requests[-1]["body"]["messages"]) == examples_help
    finally:
        restarted.stop()


def test_no_budget_means_no_evaluation_and_no_examples(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    llm.set_responder(scripted(examples_help=True))
    backend = start(llm, tmp_path, FEWSHOT_EVAL_CALLS="0")
    try:
        zero_shot = setup(backend)
        annotate(backend)
        status, _ = backend.post("/webhook", {"action": "START_TRAINING", "project": {"id": 1, "label_config": CONFIG}})
        assert status == 201
        time.sleep(1)
        assert llm.chat_calls == 0 and setup(backend) == zero_shot
        backend.predict(CONFIG, [{"id": 999, "data": {"text": NEW_TASK}}], PROJECT)
        assert not shows_examples(llm.requests[-1]["body"]["messages"])
    finally:
        backend.stop()


@pytest.mark.parametrize(("count", "form", "turns"), [("2", "chat", 2), ("0", "block", 0), ("3", "block", 1)])
def test_an_explicit_count_is_obeyed_without_evaluation(
    llm: fake.FakeLLMServer, tmp_path: Path, count: str, form: str, turns: int
) -> None:
    llm.set_responder(scripted(examples_help=False))  # examples hurt: auto would say 0; explicit wins
    backend = start(llm, tmp_path, FEWSHOT_EXAMPLES=count, FEWSHOT_FORM=form)
    try:
        setup(backend)
        annotate(backend)
        status, _ = backend.post("/webhook", {"action": "START_TRAINING", "project": {"id": 1, "label_config": CONFIG}})
        assert status == 201
        time.sleep(1)
        assert llm.chat_calls == 0 and metrics(backend)["ml_backend_fewshot_evaluations_total"] == 0
        backend.predict(CONFIG, [{"id": 999, "data": {"text": NEW_TASK}}], PROJECT)
        sent = llm.requests[-1]["body"]["messages"]
        if form == "chat":
            assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
        else:
            assert len(sent) == 2
            assert sent[-1]["content"].count("答案 (answer)") == (int(count) if int(count) else 0)
        assert turns == (len(sent) - 2) // 2 or form == "block"
    finally:
        backend.stop()


def test_the_projects_annotations_rescale_an_overconfident_score(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """A model that says 0.9 of every answer but is right on half the project's annotated tasks: after the
    automatic evaluation the prediction score says about 0.5, with no call beyond the evaluation's, and a
    restarted backend keeps it."""
    def reply(body: dict) -> fake.Reply:
        text = task_text(body["messages"])
        truth = TRUTH[text]
        right = text == NEW_TASK or int(re.search(r"第(\d+)条", text).group(1)) % 4 < 2  # half, in both labels
        answer = truth if right else ("负面" if truth == "正面" else "正面")
        return fake.chat(json.dumps({"sentiment": answer, "_confidence": 0.9}, ensure_ascii=False))

    llm.set_responder(reply)
    new_task = [{"id": 999, "data": {"text": NEW_TASK}}]
    # one task's self-reported 0.9, unweighed by answer shares (test_answer_shares), is what the map rescales
    backend = start(llm, tmp_path, FEWSHOT_EVAL_CALLS="40", LLM_LOGPROBS="off", LLM_SCORE_SHARES="off")
    try:
        setup(backend)
        [before] = backend.predict(CONFIG, new_task, PROJECT)
        assert before["score"] == pytest.approx(0.9)
        annotate(backend)
        settle(backend, llm)
        log = [line for line in backend.logs().splitlines() if "project evaluation" in line]
        assert log and "score map {" in log[-1]
        calls = llm.chat_calls
        [after] = backend.predict(CONFIG, new_task, PROJECT)
        assert llm.chat_calls == calls + 1  # the map costs no call of its own
        assert 0.3 < after["score"] < 0.7, after
    finally:
        backend.stop()
    restarted = start(llm, tmp_path, FEWSHOT_EVAL_CALLS="40", LLM_LOGPROBS="off", LLM_SCORE_SHARES="off")
    try:
        setup(restarted)
        [again] = restarted.predict(CONFIG, new_task, PROJECT)
        assert again["score"] == after["score"]
    finally:
        restarted.stop()


NER_CONFIG = """<View>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
  <Text name="text" value="$text"/>
</View>"""
def spelled(pieces: list[tuple[str, float]]) -> fake.Reply:
    """A reply made of (text, probability) pieces, each piece one token with that logprob."""
    tokens = [(t, math.log(p)) for t, p in pieces]
    return fake.chat("".join(t for t, _ in tokens), logprobs=tokens)


PEOPLE = ["Anna Berg", "Li Wei", "Omar Haddad", "Sara Lind", "Tom Reyes", "Mia Chen", "Ivan Petrov", "Nora Holt"]


def test_entity_region_scores_are_fitted_to_the_projects_annotations(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """A small model that lists each sentence's person rightly and invents an ORG from its weekday, both spelled
    at 0.95: after the automatic evaluation the editor's span scores say about 0.5, at no extra call."""
    def pieces(person: str) -> list[tuple]:
        return [('{"ner": [{"label": "', 0.99), ("PER", 0.95), ('", "text": "', 0.99), (person, 0.95),
                ('"}, {"label": "', 0.99), ("ORG", 0.95), ('", "text": "', 0.99), ("Monday", 0.95), ('"}]}', 0.99)]

    def reply(body: dict) -> fake.Reply:
        person = task_text(body["messages"]).split(" joined")[0]
        return spelled(pieces(person))

    def sentence(i: int) -> tuple[str, str, str]:
        person, org = PEOPLE[i % 8], f"Unit {i}"
        return person, org, f"{person} joined {org} on Monday."

    llm.set_responder(reply)
    backend = start(llm, tmp_path, FEWSHOT_EVAL_CALLS="40")
    try:
        backend.setup(NER_CONFIG, PROJECT)
        new_task = [{"id": 999, "data": {"text": "Kai Moss joined Unit 99 on Monday."}}]
        [before] = backend.predict(NER_CONFIG, new_task, PROJECT)
        assert [r["score"] for r in before["result"]] == pytest.approx([0.95, 0.95], abs=1e-3)
        for n in range(1, 17):
            person, org, text = sentence(n)
            spans = [(person, "PER"), (org, "ORG")]
            result = [{"from_name": "ner", "to_name": "text", "type": "labels", "value": {
                "start": text.index(m), "end": text.index(m) + len(m), "text": m, "labels": [label]}}
                for m, label in spans]
            post_annotation(backend, n, text, result, NER_CONFIG)
        settle(backend, llm, NER_CONFIG)
        log = [line for line in backend.logs().splitlines() if "project evaluation" in line]
        assert log and "region maps {'ner'" in log[-1], backend.logs()[-3000:]
        calls = llm.chat_calls
        [after] = backend.predict(NER_CONFIG, new_task, PROJECT)
        assert llm.chat_calls == calls + 1
        assert [r["value"]["text"] for r in after["result"]] == ["Kai Moss", "Monday"]  # the answer is unchanged
        for region in after["result"]:
            assert 0.3 < region["score"] < 0.7, after  # half the spans it wrote at 0.95 were right
    finally:
        backend.stop()


def doubtful_lister(body: dict) -> fake.Reply:
    """Lists the sentence's person and closes the list in doubt (P(more) 0.4); made to go on, it invents the
    weekday as an ORG, spelled surely."""
    person = task_text(body["messages"]).split(" met")[0]
    fmt = body.get("response_format") or {}
    forced = ((fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}).get("properties", {})
    pieces = [('{"ner": [{"label": "', 0.99), ("PER", 0.95), ('", "text": "', 0.99), (person, 0.95),
              ('"}', 0.6, {'"}': 0.6, '"},': 0.4})]
    if forced.get("ner", {}).get("minItems"):
        pieces += [(', {"label": "', 0.99), ("ORG", 0.9), ('", "text": "', 0.99), ("Monday", 0.95), ('"}', 0.99)]
    pieces.append(("]}", 0.99, {"]}": 0.99}))
    tokens = [(t, math.log(p), tuple((a, math.log(q)) for a, q in (alt[0] if alt else {}).items()))
              for t, p, *alt in pieces]
    return fake.chat("".join(t[0] for t in tokens), logprobs=tokens)


def annotate_people(backend: Backend, llm: fake.FakeLLMServer) -> str:
    """16 annotated sentences, each with its person only; the evaluation's log line once it has run."""
    for n in range(1, 17):
        person = PEOPLE[n % 8]
        value = {"start": 0, "end": len(person), "text": person, "labels": ["PER"]}
        post_annotation(backend, n, f"{person} met the board on Monday.",
                        [{"from_name": "ner", "to_name": "text", "type": "labels", "value": value}], NER_CONFIG)
    settle(backend, llm, NER_CONFIG)
    log = [line for line in backend.logs().splitlines() if "project evaluation" in line]
    assert log, backend.logs()
    return log[-1]


def assert_only_the_person(backend: Backend, llm: fake.FakeLLMServer, task: list[dict], before: dict) -> None:
    """One call, the annotators' answer (the person alone), and a new model_version: Label Studio predicts again."""
    calls = llm.chat_calls
    [after] = backend.predict(NER_CONFIG, task, PROJECT)
    assert llm.chat_calls == calls + 1
    assert [r["value"]["text"] for r in after["result"]] == ["Kai Moss"]
    assert after["model_version"] != before["model_version"]


def test_list_extension_is_turned_off_where_the_projects_annotations_show_it_invents(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    """A model whose lists end in doubt and, made to go on, invent: each task costs two calls and gets the
    invention until the annotations are judged; then one call and the annotators' answer."""
    llm.set_responder(doubtful_lister)
    backend = start(llm, tmp_path, FEWSHOT_EVAL_CALLS="40")
    try:
        backend.setup(NER_CONFIG, PROJECT)
        new_task = [{"id": 999, "data": {"text": "Kai Moss met the board on Monday."}}]
        calls = llm.chat_calls
        [before] = backend.predict(NER_CONFIG, new_task, PROJECT)
        assert llm.chat_calls == calls + 2
        assert [r["value"]["text"] for r in before["result"]] == ["Kai Moss", "Monday"]
        choice = annotate_people(backend, llm)
        assert "list extension off" in choice and "added 0 regions the annotators have" in choice, choice
        assert_only_the_person(backend, llm, new_task, before)
    finally:
        backend.stop()


def test_regions_the_projects_annotations_show_to_be_mostly_invented_are_left_out(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    """A model that lists each sentence's person surely (0.98) and invents an ORG from its weekday less surely
    (0.8): after the evaluation the weekday is no longer pre-labelled, under a new model_version, at no extra call."""

    def lister(body: dict) -> fake.Reply:
        person = task_text(body["messages"]).split(" met")[0]
        pieces = [('{"ner": [{"label": "', 0.99), ("PER", 0.95), ('", "text": "', 0.99), (person, 0.98),
                  ('"}, {"label": "', 0.99), ("ORG", 0.9), ('", "text": "', 0.99), ("Monday", 0.8), ('"}]}', 0.99)]
        return spelled(pieces)

    llm.set_responder(lister)
    backend = start(llm, tmp_path, FEWSHOT_EVAL_CALLS="40")
    try:
        backend.setup(NER_CONFIG, PROJECT)
        new_task = [{"id": 999, "data": {"text": "Kai Moss met the board on Monday."}}]
        [before] = backend.predict(NER_CONFIG, new_task, PROJECT)
        assert [r["value"]["text"] for r in before["result"]] == ["Kai Moss", "Monday"]
        choice = annotate_people(backend, llm)
        assert "region cuts {'ner': {'below': 0.85" in choice, choice
        assert_only_the_person(backend, llm, new_task, before)
    finally:
        backend.stop()
