"""Prompt language, choice-order invariance, reasoning and score plumbing, through the backend.

A real backend process talks to the local fake LLM server, as Label Studio would drive
it: what reaches the model (messages, response format, logprob parameters) and what comes
back (scores) is read off the wire. Whether the model's answers really stay put when the
choices are reordered is measured on the real model by `bench/quality.py`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from my_ml_backend.labeling.prompts import answer_schema, build_prompt, prompt_language
from my_ml_backend.predicting.factory import schema_for
from tests.conftest import TEST_KEY, Backend
from tests.fake_llm import server as fake

TOPICS = ("computers", "food", "law", "medicine", "sports")


def topic_config(values: tuple[str, ...] | list[str]) -> str:
    options = "".join(f'<Choice value="{v}"/>' for v in values)
    return (
        '<View><Header value="What is this quote about?"/><Text name="text" value="$text"/>'
        f'<Choices name="topic" toName="text" choice="single">{options}</Choices></View>'
    )


NER_CONFIG = """<View>
  <Labels name="ner" toName="text"><Label value="PER" hint="person"/><Label value="ORG"/></Labels>
  <Text name="text" value="$text"/>
</View>"""
CJK = re.compile(r"[\u4e00-\u9fff]")


def env_for(llm: fake.FakeLLMServer, **extra: str) -> dict[str, str]:
    return {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CACHE": "off", **extra}


@pytest.fixture()
def backend(llm: fake.FakeLLMServer, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(env_for(llm), tmp_path / "backend")
    yield b
    b.stop()


def messages_sent(llm: fake.FakeLLMServer) -> list[dict[str, str]]:
    return llm.requests[-1]["body"]["messages"]


def tokens_of(content: str, answer: str, probability: float) -> list[tuple[str, float]]:
    """Tokens spelling `content`: the last occurrence of `answer` gets `probability`, the rest 0.99."""
    at = content.rindex(answer)
    pieces = [(content[:at], 0.99), (answer, probability), (content[at + len(answer) :], 0.99)]
    return [(text, math.log(p)) for text, p in pieces if text]


def test_language_follows_the_task_text(backend: Backend, llm: fake.FakeLLMServer) -> None:
    config = topic_config(TOPICS)
    llm.enqueue(fake.chat('{"topic": "food"}'))
    backend.predict(config, [{"id": 1, "data": {"text": "The early bird gets the coffee left over."}}])
    system, user = messages_sent(llm)
    assert system["role"] == "system" and user["role"] == "user"
    assert "Fields to fill in" in system["content"] and not CJK.search(system["content"] + user["content"])
    assert user["content"].endswith("The early bird gets the coffee left over.\n>>>")  # the text comes last

    llm.enqueue(fake.chat('{"topic": "food"}'))
    backend.predict(config, [{"id": 2, "data": {"text": "早起的鸟儿喝到隔夜的咖啡。"}}])
    system, user = messages_sent(llm)
    assert "需要填写的字段" in system["content"] and "Fields to fill in" not in system["content"]
    assert user["content"].startswith("文本 text:")


def test_prompt_language_counts_letters_not_digits_or_code() -> None:
    assert prompt_language({"text": "Fix the bug in parse() at line 42"}) == "en"
    assert prompt_language({"text": "这个函数 parse_reply() 在第 42 行报错"}) == "zh"
    assert prompt_language({"text": "Alice met 张三 in Paris yesterday to sign the contract"}) == "en"
    assert prompt_language({"text": "12345 !!!"}) == "en"


TAXONOMY = """<View><Text name="text" value="$text"/><Taxonomy name="tax" toName="text">
  {items}
</Taxonomy></View>"""


def test_reordering_a_config_changes_nothing_the_model_sees() -> None:
    """Choices, Labels and Taxonomy: the messages and the schema are the same whatever the tags' order."""
    texts = {"text": "The early bird gets the coffee left over."}
    per, org = '<Label value="PER" hint="person"/>', '<Label value="ORG"/>'
    ner_reversed = NER_CONFIG.replace(per + org, org + per)
    branches = ['<Choice value="Animals"><Choice value="Cats"/><Choice value="Dogs"/></Choice>',
                '<Choice value="Food"/>']
    pairs = [
        (topic_config(TOPICS), topic_config(tuple(reversed(TOPICS)))),
        (topic_config(TOPICS), topic_config(("law", "sports", "computers", "medicine", "food"))),
        (NER_CONFIG, ner_reversed),
        (TAXONOMY.format(items="".join(branches)), TAXONOMY.format(items="".join(reversed(branches)))),
    ]
    for one, other in pairs:
        assert build_prompt(schema_for(one), texts) == build_prompt(schema_for(other), texts)
        assert answer_schema(schema_for(one), texts) == answer_schema(schema_for(other), texts)
    lines = build_prompt(schema_for(topic_config(TOPICS)), texts)[0]["content"].splitlines()
    options = [line for line in lines if line.strip("- ").strip() in TOPICS]
    assert all(line.startswith("   - ") for line in options)  # a plain list, not "1. computers" or ["computers", ...]
    others = [line for line in lines if line not in options]
    assert not any(topic in line for line in others for topic in TOPICS)  # the format shows no value to copy


def alternatives(content: str, key: str, distribution: dict[str, float]) -> list[tuple]:
    """Tokens spelling `content` whose answer token after `"key": "` carries `distribution` as alternatives."""
    at = content.index('"', content.index(f'"{key}":') + len(key) + 3) + 1
    end = content.index('"', at)
    top = tuple((value, math.log(p)) for value, p in distribution.items())
    answer = content[at:end]
    return [(content[:at], math.log(0.99), ()), (answer, math.log(distribution[answer]), top),
            (content[end:], math.log(0.99), ())]


def test_answers_are_the_argmax_after_the_content_free_bias_is_divided_out(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    """The model leans to "food"; asked about "N/A" it says so, and the close calls move to "law".

    Content-free texts get food 0.7 (prior 0.8 * that + 0.2 uniform: food 0.60, law 0.12).
    Clear texts: food 0.9. Close calls: food 0.5, law 0.45; after dividing out sqrt(prior),
    law 0.62 and food 0.31. The content-free calls are made once (3 texts), whatever the batch.
    """
    bias = {"food": 0.7, "law": 0.1, "sports": 0.1, "medicine": 0.05, "computers": 0.05}
    lean = {"food": 0.9, "law": 0.04, "sports": 0.02, "medicine": 0.02, "computers": 0.02}
    close = {"food": 0.5, "law": 0.45, "sports": 0.02, "medicine": 0.02, "computers": 0.01}

    def respond(body: dict) -> fake.Reply:
        text = body["messages"][-1]["content"].split("<<<\n", 1)[1]
        content = '{"topic": "food"}'
        dist = close if text.startswith("close") else lean if text.startswith("clear") else bias
        return fake.chat(content, logprobs=alternatives(content, "topic", dist))

    llm.set_responder(respond)
    backend = Backend(env_for(llm, LLM_OUTPUT_MODE="json_schema"), tmp_path / "b")
    try:
        tasks = [{"id": i, "data": {"text": f"{'close' if i > 3 else 'clear'} call number {i}"}} for i in range(1, 7)]
        predictions = backend.predict(topic_config(TOPICS), tasks)
        only_close = backend.predict(topic_config(TOPICS), tasks[3:])
    finally:
        backend.stop()
    answers = [p["result"][0]["value"]["choices"][0] for p in predictions]
    assert answers == ["food"] * 3 + ["law"] * 3
    scores = [p["score"] for p in predictions]
    assert min(scores[:3]) > 0.75 > 0.7 > max(scores[3:]) > 0.55  # the close calls rank first for review
    assert all("_calibration" not in p for p in predictions + only_close)  # the private key never leaves
    # Another batch, other company: the same answers and scores (the prior is not the batch's mix).
    assert [p["result"][0]["value"] for p in only_close] == [{"choices": ["law"]}] * 3
    assert [p["score"] for p in only_close] == scores[3:]
    asked = [r["body"]["messages"][-1]["content"].split("<<<\n", 1)[1] for r in llm.requests]
    content_free = sorted(t.removesuffix("\n>>>") for t in asked if not t.startswith(("clear", "close")))
    assert content_free == ["N/A", "[MASK]", "nothing"]


def test_slow_content_free_calls_never_keep_a_batch_past_its_deadline(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    """The content-free calls of the first batch take 8 s each; the batch has 12 s (ML_TIMEOUT_PREDICT 22).

    Label Studio drops a late reply whole, so the batch answers by its deadline with the raw
    distribution; the calls finish in the background and the next batch is calibrated without asking again.
    """
    lean = {"food": 0.5, "law": 0.45, "sports": 0.02, "medicine": 0.02, "computers": 0.01}

    def respond(body: dict) -> fake.Reply:
        text = body["messages"][-1]["content"].split("<<<\n", 1)[1]
        content = '{"topic": "food"}'
        return fake.chat(content, logprobs=alternatives(content, "topic", lean),
                         delay=0.0 if text.startswith("task") else 8.0)

    llm.set_responder(respond)
    backend = Backend(env_for(llm, LLM_OUTPUT_MODE="json_schema", ML_TIMEOUT_PREDICT="22", LLM_TIMEOUT="30"),
                      tmp_path / "b")
    try:
        started = time.monotonic()
        first = backend.predict(topic_config(TOPICS), [{"id": i, "data": {"text": f"task {i}"}} for i in (1, 2)])
        took = time.monotonic() - started
        while llm.chat_calls < 5 and time.monotonic() - started < 30:  # the 3 calls go on after the reply
            time.sleep(0.2)
        time.sleep(0.5)
        second = backend.predict(topic_config(TOPICS), [{"id": 3, "data": {"text": "task 3"}}])
    finally:
        backend.stop()
    assert took < 13.5, took  # 12 s deadline; before, the second call started at 8 s and ended at 16 s
    assert [p["result"][0]["value"]["choices"] for p in first] == [["food"]] * 2
    assert llm.chat_calls == 6  # 2 tasks, 3 content-free texts asked once, 1 task
    assert first[0]["score"] == pytest.approx(0.5, abs=1e-3)  # raw: food's share of the choices
    assert second[0]["score"] != first[0]["score"]  # calibrated with the priors that came late


def test_choices_sharing_their_first_token_are_decided_where_they_differ(
    llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    """"评价正面" / "评价负面": the first token "评价" says nothing. The model wrote the first listed choice;
    at the token that tells them apart it gave the other 0.7, so the backend answers the other."""

    def respond(body: dict) -> fake.Reply:
        text = body["messages"][-1]["content"].split("<<<\n", 1)[1]
        lean = {"正面": 0.5, "负面": 0.5} if text.startswith(("无", "空白", "暂无")) else {"正面": 0.3, "负面": 0.7}
        top = tuple((t, math.log(p)) for t, p in lean.items())
        tokens = [('{"topic": "', math.log(0.99), ()), ("评价", math.log(0.99), (("评价", math.log(0.99)),)),
                  ("正面", math.log(lean["正面"]), top), ('"}', math.log(0.99), ())]
        return fake.chat("".join(t[0] for t in tokens), logprobs=tokens)

    llm.set_responder(respond)
    backend = Backend(env_for(llm, LLM_OUTPUT_MODE="json_schema"), tmp_path / "b")
    try:
        task = {"id": 1, "data": {"text": "物流太慢了"}}
        predictions = backend.predict(topic_config(("评价正面", "评价负面")), [task])
    finally:
        backend.stop()
    assert predictions[0]["result"][0]["value"] == {"choices": ["评价负面"]}
    assert predictions[0]["score"] == pytest.approx(0.7, abs=0.01)  # the content-free prior here is even


def test_score_is_the_answer_token_probability(backend: Backend, llm: fake.FakeLLMServer) -> None:
    config = topic_config(TOPICS)
    content = '{"topic": "food", "_confidence": 0.9}'
    llm.enqueue(fake.chat(content, logprobs=tokens_of(content, "food", 0.6)))
    [prediction] = backend.predict(
        config, [{"id": 1, "data": {"text": "Seeing is deceiving. It's eating that's believing."}}]
    )
    body = llm.requests[-1]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] >= 1  # llama.cpp returns none without top_logprobs
    assert prediction["result"][0]["value"] == {"choices": ["food"]}
    assert prediction["result"][0]["score"] == pytest.approx(0.6, abs=1e-3)
    assert prediction["score"] == pytest.approx(0.6, abs=1e-3)  # not the self-reported 0.9
    assert "_confidence" not in body["messages"][0]["content"]  # not asked for (nor paid) when logprobs score


def test_reasoning_on_asks_for_a_reason_first_and_the_score_skips_it(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    backend = Backend(env_for(llm, LLM_REASONING="on", LLM_OUTPUT_MODE="json_schema"), tmp_path / "b")
    try:
        version_on = backend.setup(topic_config(TOPICS))
        content = '{"_reason": "It is about food and coffee.", "topic": "food", "_confidence": 0.8}'
        # "food" inside the reason is near-certain; the answer's own "food" token is the doubtful one.
        llm.enqueue(fake.chat(content, logprobs=tokens_of(content, "food", 0.3)))
        [prediction] = backend.predict(topic_config(TOPICS), [{"id": 1, "data": {"text": "Eat, drink and be merry."}}])
        body = llm.requests[-1]["body"]
        schema = body["response_format"]["json_schema"]["schema"]
        assert list(schema["properties"])[0] == "_reason" and schema["required"][0] == "_reason"
        assert '"_reason"' in body["messages"][0]["content"]
        assert prediction["result"][0]["value"] == {"choices": ["food"]}
        assert prediction["score"] == pytest.approx(0.3, abs=1e-3)
    finally:
        backend.stop()
    plain = Backend(env_for(llm), tmp_path / "plain")
    try:
        assert plain.setup(topic_config(TOPICS)) != version_on  # other prompt, other model_version
    finally:
        plain.stop()


def test_entity_score_is_its_label_probability_times_its_text_tokens_mean(
    backend: Backend, llm: fake.FakeLLMServer
) -> None:
    """The geometric mean of the text's tokens (not their product); x P(label among the labels) when the label
    comes after the text (for a label written first, its probability is the choice of what to list next)."""
    alternatives = (("PER", math.log(0.6)), ("ORG", math.log(0.2)), ("P", math.log(0.1)), ("x", math.log(0.1)))
    label_first = [  # the format asked for: an ORG entity, then {"label": "PER", "text": "Norma Fisher"}
        ('{"ner": [{"label": "', 0.99), ("ORG", 0.5), ('", "text": "', 0.99), ("Hull", 0.4), ("-Gallegos", 0.9),
        ('"}, {"label": "', 0.99), ("PER", 0.6, alternatives), ('", "text": "', 0.99), ("Norma", 0.5),
        (" Fisher", 0.9), ('"}]}', 0.99),
    ]
    text_first = [  # a model that writes the text first: two entities of one label, the second with alternatives
        ('{"ner": [{"text": "', 0.99), ("Hull", 0.4), ("-Gallegos", 0.9), ('", "label": "', 0.99), ("PER", 0.5),
        ('"}, {"text": "', 0.99), ("Norma", 0.5), (" Fisher", 0.9), ('", "label": "', 0.99),
        ("PER", 0.6, alternatives), ('"}]}', 0.99),
    ]
    scores = []
    for i, pieces in enumerate((label_first, text_first)):
        tokens = [(t, math.log(p), *rest) for t, p, *rest in pieces]
        llm.enqueue(fake.chat("".join(piece[0] for piece in pieces), logprobs=tokens))
        [prediction] = backend.predict(NER_CONFIG, [{"id": i, "data": {"text": "Norma Fisher joined Hull-Gallegos."}}])
        scores.append({r["value"]["text"]: r["score"] for r in prediction["result"]})
    # Label first: the text's tokens alone, whatever the label tokens' probabilities (0.5, 0.6 here).
    assert scores[0]["Norma Fisher"] == pytest.approx(math.sqrt(0.5 * 0.9), abs=1e-3)
    assert scores[0]["Hull-Gallegos"] == pytest.approx(math.sqrt(0.4 * 0.9), abs=1e-3)
    # Text first: x P(its label) read after the text, never an earlier object's ("PER" 0.5 before Norma Fisher).
    # "P" begins PER only; "x" begins no label: P(PER | PER, ORG) = (0.6 + 0.1) / 0.9. Without alternatives the
    # label token's own probability stands in.
    assert scores[1]["Norma Fisher"] == pytest.approx(math.sqrt(0.5 * 0.9) * 0.7 / 0.9, abs=1e-3)
    assert scores[1]["Hull-Gallegos"] == pytest.approx(math.sqrt(0.4 * 0.9) * 0.5, abs=1e-3)
    system = messages_sent(llm)[0]["content"]
    assert "   - PER: person" in system and "   - ORG" in system
    assert '[{"label": "<type>", "text": "<entity name>"}, ...]' in system  # the type first, then the name


def test_task_score_is_lowered_by_the_chance_the_entity_list_goes_on(backend: Backend, llm: fake.FakeLLMServer) -> None:
    """The data manager sorts tasks by the prediction score: a list the model nearly continued (the usual sign of a
    missed entity) must rank below one it closed surely, though every listed name was spelled as surely."""
    def pieces(close: tuple) -> list[tuple]:
        return [('{"ner": [{"label": "', 0.99), ("PER", 0.6), ('", "text": "', 0.99), ("Norma", 0.81),
                (" Fisher", 1.0), close, ("]}", 0.99, (("]}", math.log(0.99)),))]

    scores = []
    for i, close in enumerate([('"}', 0.6, (('"}', math.log(0.6)), ('"},', math.log(0.4)))),
                               ('"}', 0.97, (('"}', math.log(0.97)), ('"},', math.log(0.03))))]):
        tokens = [(t, math.log(p), *rest) for t, p, *rest in pieces(close)]
        llm.enqueue(fake.chat("".join(t[0] for t in tokens), logprobs=tokens))
        text = "Norma Fisher joined Hull-Gallegos."
        [prediction] = backend.predict(NER_CONFIG, [{"id": i, "data": {"text": text}}])
        assert prediction["result"][0]["score"] == pytest.approx(0.9, abs=1e-3)  # the name's tokens: sqrt(0.81)
        scores.append(prediction["score"])
    assert scores == pytest.approx([0.9 * 0.6, 0.9 * 0.97], abs=1e-3)


def test_a_choice_beside_an_entity_list_keeps_the_lists_doubt_in_the_task_score(
    backend: Backend, llm: fake.FakeLLMServer
) -> None:
    """Single choices are re-scored from their calibrated distribution at the end of the batch; the task score made
    then must still carry P(the entity list is complete), not only the regions' mean."""
    config = NER_CONFIG.replace("</View>", '<Choices name="topic" toName="text" choice="single">'
                                '<Choice value="law"/><Choice value="food"/></Choices></View>')
    law = (("law", math.log(0.7)), ("food", math.log(0.3)))
    pieces = [('{"topic": "', 0.99), ("law", 0.7, law), ('", "ner": [{"label": "', 0.99), ("PER", 0.6),
              ('", "text": "', 0.99), ("Norma", 0.81), (" Fisher", 1.0),
              ('"}', 0.6, (('"}', math.log(0.6)), ('"},', math.log(0.4)))), ("]}", 0.99, (("]}", math.log(0.99)),))]
    tokens = [(t, math.log(p), *rest) for t, p, *rest in pieces]
    llm.set_responder(lambda body: fake.chat("".join(t[0] for t in tokens), logprobs=tokens))  # content-free too
    [prediction] = backend.predict(config, [{"id": 1, "data": {"text": "Norma Fisher sued Hull-Gallegos."}}])
    regions = [r["score"] for r in prediction["result"]]
    assert len(regions) == 2 and any("choices" in r["value"] for r in prediction["result"])
    assert prediction["score"] == pytest.approx(sum(regions) / 2 * 0.6, abs=1e-3)


def test_without_logprobs_the_score_is_the_models_own_confidence(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    # LLM_SCORE_SHARES=off: the confidence as said (weighed by answer shares in test_answer_shares)
    backend = Backend(env_for(llm, LLM_LOGPROBS="off", LLM_SCORE_SHARES="off"), tmp_path / "b")
    try:
        llm.enqueue(fake.chat('{"topic": "law", "_confidence": 0.7}'))
        [prediction] = backend.predict(topic_config(TOPICS), [{"id": 1, "data": {"text": "A lawyer walks in."}}])
        body = llm.requests[-1]["body"]
        assert "logprobs" not in body and "top_logprobs" not in body
        assert '"_confidence"' in body["messages"][0]["content"]  # the fallback is asked for
        assert prediction["score"] == pytest.approx(0.7)
    finally:
        backend.stop()


def test_no_content_free_call_when_replies_carry_no_alternatives(backend: Backend, llm: fake.FakeLLMServer) -> None:
    """Endpoints that return no top alternatives (or no logprobs) never pay for the calibration calls."""
    content = '{"topic": "law"}'
    llm.set_responder(lambda body: fake.chat(content, logprobs=tokens_of(content, "law", 0.6)))
    tasks = [{"id": i, "data": {"text": f"A lawyer walks in, take {i}."}} for i in range(4)]
    predictions = backend.predict(topic_config(TOPICS), tasks)
    assert [p["result"][0]["value"] for p in predictions] == [{"choices": ["law"]}] * 4
    assert llm.chat_calls == 4
