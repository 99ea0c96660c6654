"""Our backend against a real small LLM: every control type comes back valid, one call per task.

The model is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) served by llama-cpp-python 0.3.36's
OpenAI-compatible server (``scripts/local_model.sh``; fixtures in ``conftest.py``). These
tests assert validity, not accuracy: every region validates with ``LabelInterface``, spans
satisfy ``text == task_text[start:end]`` (code points), values respect the control's
limits, and each task costs exactly one chat request. Accuracy figures come from
``bench/real_model_bench.py``.

What llama_cpp.server 0.3.36 does with what we send (checked by ``test_llama_cpp_server_facts``):

- ``response_format={"type": "json_schema", ...}`` is refused with **HTTP 500** (not 400):
  its request model only knows ``"text"`` and ``"json_object"``, and the validation error
  comes back as ``internal_server_error`` with a message naming ``response_format``.
  ``errors.classify`` therefore treats a 5xx naming ``response_format`` as a refusal, and the
  client steps down instead of failing every task as a server error.
- ``{"type": "json_object", "schema": {...}}`` is enforced: the schema is compiled to a
  grammar, so enum values, required keys and types hold (an enum of nonsense words is
  obeyed). Plain ``{"type": "json_object"}`` only guarantees some JSON object. Hence the
  rung ``json_object_schema`` between ``json_schema`` and ``json_object`` in
  ``llm.output_modes.LADDER``: on this server ``auto`` pays one refused request per backend
  process (``pacing`` does not retry a 5xx that ``errors`` reads as a refusal), then stays
  on ``json_object_schema``.
- ``logprobs: true`` alone is accepted and silently ignored (``choices[0].logprobs`` is
  null: the server passes ``top_logprobs`` on as its ``logprobs`` count, and that is unset).
  With ``top_logprobs`` (even 0) it returns per-token log-probabilities, at a price: a
  13-token answer took 1.8-2.6 s instead of 0.35 s on 2 cores (a softmax over the 151k-token
  vocabulary per token). We send ``logprobs: true`` only, so scores here fall back to the
  model's self-reported ``_confidence`` times coverage (README, "预测结果").
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import config
from tests.real_model.conftest import VALID_COUNTS, RealBackend, report
from tests.real_model.local_model import LOOPBACK, LocalModelServer
from tests.real_model.validity import (
    DATETIME_CONFIG,
    MIXED_CONFIG,
    NER_CONFIG,
    NUMBER_CONFIG,
    RATING_CONFIG,
    TAXONOMY_CONFIG,
    controls_of,
    prediction_problems,
)


@dataclass
class Case:
    """One labeling config and a few tasks for it (distinct texts: no reply can be reused)."""

    name: str
    label_config: str
    tasks: list[dict[str, Any]]
    # Controls that must get at least one valid region over the case's tasks.
    must_answer: tuple[str, ...]
    # Controls that must never get a region (perRegion ones).
    never: tuple[str, ...] = ()


def _tasks(key: str, texts: list[str]) -> list[dict[str, Any]]:
    return [{"id": 100 + i, "data": {key: text}} for i, text in enumerate(texts)]


CASES = [
    Case(
        "choices_single",
        config("text_classification"),
        _tasks("text", ["这个耳机音质很好，续航也长，推荐购买。", "客服态度恶劣，退货拖了一个月。"]),
        ("sentiment",),
    ),
    Case(
        "choices_multiple_textarea",
        config("text_analysis"),
        _tasks(
            "text",
            ["新版推理服务把延迟降低了 40%，下季度将进入东南亚市场。", "公司发布了新款折叠屏手机，售价 7999 元。"],
        ),
        ("category", "analysis"),
    ),
    Case(
        "labels",
        NER_CONFIG,
        # Chinese without spaces, emoji (astral code points) before entities, a repeated mention.
        _tasks("text", ["马云在杭州创办了阿里巴巴。", "😀🎉 张三和李四去了北京，后来张三加入了腾讯。"]),
        ("ner",),
    ),
    Case(
        "textarea",
        config("code_comments"),
        _tasks("code", ["def add(a, b):\n    return a + b", "def is_even(n):\n    return n % 2 == 0"]),
        ("comment",),
    ),
    Case(
        "rating",
        RATING_CONFIG,
        _tasks("text", ["菜很好吃，服务周到，还会再来。", "用了一天就坏了，非常失望。"]),
        ("stars",),
    ),
    Case(
        "number", NUMBER_CONFIG, _tasks("text", ["这台笔记本电脑售价 5999 元。", "演唱会门票 880 元一张。"]), ("price",)
    ),
    Case(
        "datetime",
        DATETIME_CONFIG,
        _tasks("text", ["会议定于 2024 年 3 月 15 日召开。", "发布日期：2023-11-02"]),
        ("date",),
    ),
    Case(
        "taxonomy",
        TAXONOMY_CONFIG,
        _tasks("text", ["新款大模型的推理速度提升了一倍。", "昨晚的足球比赛中主队 2:1 获胜。"]),
        ("topic",),
    ),
    Case(
        "mixed_objects_and_controls",
        MIXED_CONFIG,
        [
            {
                "id": 200,
                "data": {
                    "title": "国产大模型再获突破",
                    "body": "2024年5月20日，李明在上海宣布，深度智能公司的新模型推理成本下降一半。",
                    "dialogue": [
                        {"author": "记者", "text": "新模型什么时候开放？"},
                        {"author": "李明", "text": "下个月向所有开发者开放。"},
                    ],
                },
            },
            {
                "id": 201,
                "data": {
                    "title": "暴雨导致多趟航班取消",
                    "body": "2023年7月30日，北京首都机场因暴雨取消了120个航班，王芳等旅客滞留。",
                    "dialogue": [
                        {"author": "旅客", "text": "什么时候能起飞？"},
                        {"author": "工作人员", "text": "要等雨停，请留意广播。"},
                    ],
                },
            },
        ],
        # Not "entities": in this seven-control prompt the 0.5B model answers `[]` (no entity),
        # a wrong answer but a valid one; spans are exercised by the "labels" case.
        ("tone", "summary", "quality", "year", "published", "topic"),
        never=("region_note",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_control_type_gives_valid_results(real_backend: RealBackend, case: Case) -> None:
    backend = real_backend.backend
    model_version = backend.setup(case.label_config)
    controls = controls_of(case.label_config)
    before, mark = real_backend.chat_requests(), real_backend.log_mark()
    started = time.monotonic()
    predictions = real_backend.predict(case.label_config, case.tasks)
    seconds = time.monotonic() - started

    # One chat call per task, plus the content-free calibration calls of a single-choice config:
    # three per prompt language of its tasks, asked once (labeling/calibration.py), plus at most one
    # more per task whose list answer ended in doubt (labeling/extension.py; lists only).
    calibration = real_backend.content_free_calls(mark)
    extensions = real_backend.extension_calls(mark)
    single = any('choice="multiple"' not in tag for tag in re.findall(r"<Choices [^>]*>", case.label_config))
    assert calibration in ((0, 3, 6) if single else (0,)), calibration
    assert extensions <= len(case.tasks), extensions  # at most once per task
    expected = Counter({200: len(case.tasks) + calibration + extensions})
    assert real_backend.chat_requests() - before == expected, "one call per task (a doubtful list: two)"
    answered: Counter[str] = Counter()
    for task, prediction in zip(case.tasks, predictions, strict=True):
        assert "error" not in prediction, prediction
        assert prediction["model_version"] == model_version
        problems = prediction_problems(case.label_config, task, prediction)
        assert problems == [], f"{problems}\n{json.dumps(prediction, ensure_ascii=False)}"
        names = {r["from_name"] for r in prediction["result"]}
        answered.update(names)
        for name in case.never:
            assert name not in names, f"{name} is perRegion: it must be left to the annotator"
        for name, info in controls.items():
            if name not in case.never:
                VALID_COUNTS[info.tag]["tasks"] += 1
                VALID_COUNTS[info.tag]["valid"] += name in names
        for region in prediction["result"]:
            VALID_COUNTS[controls[region["from_name"]].tag]["regions"] += 1

    missing = [name for name in case.must_answer if not answered[name]]
    assert not missing, f"no valid result at all for {missing}: {json.dumps(predictions, ensure_ascii=False)}"
    report(
        f"{case.name}: {len(case.tasks)} tasks in {seconds:.1f} s ({seconds / len(case.tasks):.1f} s/task), "
        f"regions per control {dict(sorted(answered.items()))}"
    )


def test_output_mode_is_learned_once(real_backend: RealBackend) -> None:
    """json_schema is refused once (one HTTP 500, not retried), then json_object + schema is used for good."""
    # The task, then the three content-free calls of its language (Chinese); then the mode is known.
    assert real_backend.warmup_content_free == 3
    assert real_backend.warmup_statuses == Counter({500: 1, 200: 1 + 3}), real_backend.warmup_statuses
    assert real_backend.warmup_prediction["result"], real_backend.warmup_prediction
    assert "改用 json_object_schema" in real_backend.backend.logs()
    # Later calls go straight to the learned mode: each case asserts exactly one 200 per task.


def _post(server: LocalModelServer, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    """A raw chat completion request: status, JSON body and seconds taken."""
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    started = time.monotonic()
    try:
        with LOOPBACK.open(request, timeout=120) as resp:
            return resp.status, json.load(resp), time.monotonic() - started
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), time.monotonic() - started


def test_llama_cpp_server_facts(llama_server: LocalModelServer) -> None:
    """What the module docstring (and README) say about llama_cpp.server 0.3.36, checked."""
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "enum": ["zq-alpha", "zq-beta"]}},
        "required": ["code"],
    }
    base = {
        "model": llama_server.model,
        "messages": [{"role": "user", "content": "What is 2 + 2? Reply in json."}],
        "temperature": 0,
        "max_tokens": 40,
    }
    status, body, _ = _post(
        llama_server,
        {**base, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}},
    )
    assert status == 500 and "response_format" in body["error"]["message"], (status, body)

    status, body, _ = _post(llama_server, {**base, "response_format": {"type": "json_object", "schema": schema}})
    assert status == 200, body
    assert json.loads(body["choices"][0]["message"]["content"])["code"] in {"zq-alpha", "zq-beta"}, body

    status, body, plain_seconds = _post(llama_server, {**base, "logprobs": True})
    assert status == 200 and body["choices"][0]["logprobs"] is None, body

    status, body, top_seconds = _post(llama_server, {**base, "logprobs": True, "top_logprobs": 1})
    assert status == 200, body
    tokens = body["choices"][0]["logprobs"]["content"]
    assert tokens and all(isinstance(t["logprob"], float) for t in tokens), body
    report(
        f"logprobs: true alone -> null ({plain_seconds:.2f} s); with top_logprobs=1 -> {len(tokens)} tokens "
        f"({top_seconds:.2f} s)"
    )
