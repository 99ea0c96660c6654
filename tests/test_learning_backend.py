"""Few-shot examples and prompt control through the backend's HTTP API (a real process).

What Label Studio would see: annotation webhooks change what the model is shown, the
version moves when the example set grows by a bucket, per-project instructions from
/setup's extra params reach the prompt, and an interactive instruction is used once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY, Backend
from tests.fake_llm import server as fake

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="正面"/><Choice value="负面"/></Choices>
  <TextArea name="prompt" toName="text"/>
</View>"""
PROJECT = "7.1700000000"


def env_for(llm: fake.FakeLLMServer, **extra: str) -> dict[str, str]:
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_CACHE": "off"}
    return {**env, "FEWSHOT_EXAMPLES": "3", **extra}  # an explicit count: examples shown without evaluation


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "backend"


@pytest.fixture()
def learner(llm: fake.FakeLLMServer, workdir: Path) -> Iterator[Backend]:
    backend = Backend(env_for(llm), workdir)
    yield backend
    backend.stop()


def annotation_event(action: str, annotation_id: int, task_id: int, text: str, label: str) -> dict:
    result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
    return {
        "action": action,
        "annotation": {"id": annotation_id, "task": task_id, "result": result, "was_cancelled": False},
        "task": {"id": task_id, "data": {"text": text}},
        "project": {"id": 7, "label_config": CONFIG},
    }


def last_prompt(llm: fake.FakeLLMServer) -> str:
    return "\n".join(m["content"] for m in llm.requests[-1]["body"]["messages"])


def predict_one(backend: Backend, llm: fake.FakeLLMServer, text: str, context: dict | None = None) -> str:
    llm.enqueue(fake.chat('{"sentiment": "正面"}'))
    payload = {
        "tasks": [{"id": 99, "data": {"text": text}}],
        "project": PROJECT,
        "label_config": CONFIG,
        "params": {"context": context},
    }
    status, body = backend.post("/predict", payload)
    assert status == 200 and "result" in body["results"][0], body
    return last_prompt(llm)


def setup(backend: Backend, extra_params: object = None) -> str:
    status, body = backend.post("/setup", {"project": PROJECT, "schema": CONFIG, "extra_params": extra_params})
    assert status == 200, body
    return body["model_version"]


def test_annotation_webhooks_become_examples_and_move_the_version(
    learner: Backend, llm: fake.FakeLLMServer, workdir: Path
) -> None:
    plain = setup(learner)
    assert "示例 1" not in predict_one(learner, llm, "快递很快，东西不错")

    created = annotation_event("ANNOTATION_CREATED", 501, 1, "快递很快，包装完好", "正面")
    status, body = learner.post("/webhook", created)
    assert status == 201 and "stored" in body["result"]["examples"], body
    one = setup(learner)
    assert one != plain  # 0 -> 1 example
    prompt = predict_one(learner, llm, "快递很快，东西不错")
    assert "快递很快，包装完好" in prompt and '答案 (answer): {"sentiment": "正面"}' in prompt

    learner.post("/webhook", annotation_event("ANNOTATION_CREATED", 502, 2, "质量差，退货", "负面"))
    two = setup(learner)
    learner.post("/webhook", annotation_event("ANNOTATION_CREATED", 503, 3, "一般般吧", "负面"))
    assert setup(learner) == two  # 3 examples: same bucket as 2, no re-prediction for one annotation

    learner.post("/webhook", annotation_event("ANNOTATION_UPDATED", 501, 1, "快递很快，包装完好", "负面"))
    assert '"sentiment": "负面"' in predict_one(learner, llm, "快递很快，东西不错").split("文本 text:")[0]

    # Examples survive a restart (same DATA_DIR).
    learner.stop()
    restarted = Backend(env_for(llm), workdir)
    try:
        assert setup(restarted) == two
        status, body = restarted.post("/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": [
            {"id": 501}, {"id": 502}, {"id": 503}], "project": {"id": 7, "label_config": CONFIG}})
        assert status == 201 and body["result"]["examples"] == "3 of 3 annotation(s) removed", body
        assert setup(restarted) == plain
        assert "示例 1" not in predict_one(restarted, llm, "快递很快，东西不错")
    finally:
        restarted.stop()


def test_project_instructions_from_extra_params_and_interactive_instruction(
    learner: Backend, llm: fake.FakeLLMServer
) -> None:
    plain = setup(learner)
    instructed = setup(learner, {"instructions": "只根据商品质量判断，忽略物流", "language": "English"})
    assert instructed != plain
    prompt = predict_one(learner, llm, "物流慢，但质量很好")
    assert "只根据商品质量判断，忽略物流" in prompt and "使用 English 书写" in prompt
    as_text = json.dumps({"instructions": "只根据商品质量判断，忽略物流", "language": "English"})
    assert setup(learner, as_text) == instructed

    context = {"result": [{"from_name": "prompt", "to_name": "text", "type": "textarea",
                           "value": {"text": ["把'还行'算作正面"]}}]}
    prompt = predict_one(learner, llm, "还行", context)
    assert "把'还行'算作正面" in prompt and "只根据商品质量判断" in prompt
    assert "把'还行'算作正面" not in predict_one(learner, llm, "还行")  # used for that request only
    assert '"prompt"' not in prompt  # never asked to fill the instruction box

    assert setup(learner, None) == plain  # extra params cleared in Label Studio


def test_instructions_from_environment_and_prompt_file(llm: fake.FakeLLMServer, tmp_path: Path) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("规则一：反讽算负面。\n规则二：只看正文。", encoding="utf-8")
    backend = Backend(env_for(llm, LLM_INSTRUCTIONS="你在标注电商评论。", PROMPT_FILE=str(rules)), tmp_path / "b")
    try:
        setup(backend)
        prompt = predict_one(backend, llm, "呵呵，真是好质量")
        rules_in_order = ("你在标注电商评论。", "规则一：反讽算负面。", "规则二：只看正文。")
        positions = [prompt.index(rule) for rule in rules_in_order]
        assert positions == sorted(positions)
    finally:
        backend.stop()
