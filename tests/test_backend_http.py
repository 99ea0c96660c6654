"""The backend as Label Studio calls it: /health, /setup, /predict, /webhook over HTTP."""

from __future__ import annotations

import json

import pytest
from label_studio_sdk.label_interface import LabelInterface

from tests.conftest import TEST_KEY, Backend, config, example_tasks
from tests.fake_llm import server as fake

SEED_REPLIES = {
    "text_classification": {"sentiment": "正面"},
    "code_comments": {"comment": "计算第 n 个斐波那契数。"},
    "text_analysis": {"category": ["技术", "市场"], "analysis": "延迟下降，计划出海。"},
    "technical_qa": {"answer": "列表可变，元组不可变。"},
    "error_debugging": {"error_type": "依赖问题", "diagnosis": "缺少 requests，pip install requests。"},
}


def test_health_without_calling_the_llm(backend: Backend, llm: fake.FakeLLMServer) -> None:
    assert backend.get("/health")["status"] == "UP"
    assert llm.chat_calls == 0


def test_setup_makes_no_call_and_version_tracks_config(backend: Backend, llm: fake.FakeLLMServer) -> None:
    v1 = backend.setup(config("text_classification"))
    assert v1 == backend.setup(config("text_classification"))
    assert v1 != backend.setup(config("code_comments"))
    assert llm.chat_calls == 0


def test_seed_configs_get_valid_predictions(backend: Backend, llm: fake.FakeLLMServer) -> None:
    tasks = example_tasks()
    for name, answer in SEED_REPLIES.items():
        llm.reset()
        llm.enqueue(fake.chat("```json\n" + json.dumps(answer, ensure_ascii=False) + "\n```"))
        cfg = config(name)
        version = backend.setup(cfg)
        [prediction] = backend.predict(cfg, [{"id": 1, **tasks[name]}])
        assert prediction["model_version"] == version
        assert 0 < prediction["score"] <= 1
        assert prediction["result"], name
        assert LabelInterface(cfg).validate_prediction(prediction, return_errors=True) == [], name
        values = {r["from_name"]: r["value"] for r in prediction["result"]}
        for control, expected in answer.items():
            got = values[control].get("choices") or values[control].get("text")
            assert got == (expected if isinstance(expected, list) else [expected]), name
        # The task text reached the model, one call for all controls of the task.
        assert llm.chat_calls == 1
        prompt = llm.requests[0]["body"]["messages"][-1]["content"]
        assert next(iter(tasks[name]["data"].values()))[:10] in prompt


def test_one_item_per_task_in_order_and_failures_isolated(backend: Backend, llm: fake.FakeLLMServer) -> None:
    cfg = config("text_classification")
    version = backend.setup(cfg)
    llm.enqueue(fake.chat('{"sentiment": "负面"}'), fake.chat("完全无关的回答"), fake.chat('{"sentiment": "中性"}'))
    tasks = [
        {"id": 11, "data": {"text": "差评"}},
        {"id": 12, "data": {"other": "no text key"}},
        {"id": 13, "data": {"text": "嗯"}},
        {"id": 14, "data": {"text": "一般"}},
    ]
    preds = backend.predict(cfg, tasks)
    assert preds[0]["result"][0]["value"] == {"choices": ["负面"]}
    assert "result" not in preds[1] and "未找到文本内容" in preds[1]["error"]  # not stored by Label Studio
    assert preds[2]["result"] == [] and preds[2]["score"] == 0  # answered, but with no valid choice
    assert preds[3]["result"][0]["value"] == {"choices": ["中性"]}
    assert all(p["model_version"] == version for p in preds)
    # no call for the task without text; the one whose reply named no choice is asked once more the plain way
    assert llm.chat_calls == 4 and "response_format" not in llm.requests[-1]["body"]


def test_long_text_is_truncated(backend: Backend, llm: fake.FakeLLMServer) -> None:
    cfg = config("technical_qa")
    llm.enqueue(fake.chat('{"answer": "ok"}'))
    backend.predict(cfg, [{"id": 1, "data": {"question": "问" * 5000}}])
    prompt = llm.requests[0]["body"]["messages"][-1]["content"]
    assert "问" * 4000 in prompt and "问" * 4001 not in prompt
    assert "截断" in backend.logs()


def test_fatal_error_stops_the_batch(backend: Backend, llm: fake.FakeLLMServer) -> None:
    cfg = config("text_classification")
    llm.enqueue(fake.auth_failed())
    preds = backend.predict(cfg, [{"id": i, "data": {"text": "x"}} for i in range(5)])
    assert llm.chat_calls == 1
    assert all("API认证失败" in p["error"] for p in preds)


def test_errors_reach_predict_as_messages(backend: Backend, llm: fake.FakeLLMServer) -> None:
    cfg = config("text_classification")
    cases = [
        (fake.quota_exhausted(), "今日额度已用完"),
        (fake.model_unavailable("Qwen/Qwen3-Coder-480B-A35B-Instruct"), "模型不可用"),
        (fake.bind_aliyun(), "无权限访问此模型"),
        (fake.null_choices(), "响应格式异常"),
        (fake.malformed(), "响应格式异常"),
    ]
    for reply, message in cases:
        llm.reset()
        llm.set_default(reply)
        [pred] = backend.predict(cfg, [{"id": 1, "data": {"text": "x"}}])
        assert message in pred["error"], (message, pred)
        backend.forget_quota()  # a used-up or retired model is otherwise skipped for the rest of the day
    llm.reset()
    llm.set_default(fake.timeout(3))
    [pred] = backend.predict(cfg, [{"id": 1, "data": {"text": "x"}}])
    assert "请求超时" in pred["error"]
    llm.reset()
    llm.enqueue(fake.server_error(), fake.throttled(0.1), fake.chat('{"sentiment": "正面"}'))
    [pred] = backend.predict(cfg, [{"id": 1, "data": {"text": "x"}}])
    assert pred["result"][0]["value"] == {"choices": ["正面"]}  # retried through 500 and 429


def test_keyless_backend_starts_and_explains(keyless_backend: Backend, llm: fake.FakeLLMServer) -> None:
    assert keyless_backend.get("/health")["status"] == "UP"
    cfg = config("text_classification")
    version = keyless_backend.setup(cfg)
    preds = keyless_backend.predict(cfg, [{"id": 1, "data": {"text": "x"}}, {"id": 2, "data": {"text": "y"}}])
    assert [p["model_version"] for p in preds] == [version, version]
    assert all("API Key未设置" in p["error"] and "result" not in p for p in preds)
    assert llm.chat_calls == 0
    assert "API Key未设置" in keyless_backend.logs()


def test_malformed_requests_get_a_4xx_with_a_message(backend: Backend) -> None:
    cases = [
        ("/predict", b"not json"),
        ("/predict", b"[1, 2]"),
        ("/predict", json.dumps({"tasks": "nope", "label_config": config("technical_qa")}).encode()),
        ("/predict", json.dumps({"tasks": [], "project": "999.1"}).encode()),  # unknown project, no config
        ("/setup", json.dumps({"project": "1.1"}).encode()),
        ("/setup", json.dumps({"project": "1.1", "schema": "<View><Text name="}).encode()),
        ("/webhook", b"{}"),
    ]
    for path, raw in cases:
        status, body = backend.request("POST", path, raw=raw)
        assert 400 <= status < 500, (path, raw, status, body)
        assert body.get("detail"), body
    assert backend.get("/health")["status"] == "UP"  # still serving


def test_webhook_events_reach_fit(backend: Backend) -> None:
    project = {"id": 7, "label_config": config("text_classification")}
    for event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"):
        status, body = backend.post("/webhook", {"action": event, "project": project, "annotation": {"id": 1}})
        assert status == 201 and body["result"]["event"] == event, body
    status, body = backend.post("/webhook", {"action": "PROJECT_UPDATED", "project": project})
    assert status == 200 and body["status"] == "ignored"
    status, body = backend.post(
        "/train", {"project": "7.1", "label_config": project["label_config"], "annotations": []}
    )
    assert status == 201 and body["result"]["event"] == "START_TRAINING", body
    assert "收到事件 (event received): START_TRAINING, project 7" in backend.logs()


def test_two_projects_keep_their_own_config(backend: Backend, llm: fake.FakeLLMServer) -> None:
    a, b = config("text_classification"), config("technical_qa")
    backend.setup(a, project="1.1")
    backend.setup(b, project="2.2")
    llm.enqueue(fake.chat('{"sentiment": "正面"}'))
    [pred] = backend.predict(a, [{"id": 1, "data": {"text": "好"}}], project="1.1")
    assert pred["result"][0]["from_name"] == "sentiment"


def test_secret_never_in_logs_or_responses(backend: Backend, llm: fake.FakeLLMServer) -> None:
    llm.enqueue(fake.auth_failed())
    status, body = backend.post(
        "/predict",
        {"tasks": [{"id": 1, "data": {"text": "x"}}], "project": "1.1", "label_config": config("text_classification")},
    )
    assert TEST_KEY not in json.dumps(body)
    logs = backend.logs()
    assert "Task 1 prompt" in logs  # debug mode is on, so the trace was written
    assert TEST_KEY not in logs and TEST_KEY[3:15] not in logs


def test_basic_auth(llm: fake.FakeLLMServer, tmp_path) -> None:
    import base64
    import urllib.request

    b = Backend(
        {
            "MODELSCOPE_API_KEY": TEST_KEY,
            "MODELSCOPE_API_URL": llm.base_url,
            "BASIC_AUTH_USER": "mluser",
            "BASIC_AUTH_PASS": "s3cret-pass",
        },
        tmp_path,
    )
    try:
        status, body = b.request("GET", "/health")
        assert status == 401 and body["detail"]
        status, _ = b.post("/setup", {"project": "1.1", "schema": config("technical_qa")})
        assert status == 401
        for creds, expected in (("mluser:wrong", 401), ("mluser:s3cret-pass", 200)):
            req = urllib.request.Request(b.url + "/health")
            req.add_header("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    got = resp.status
            except urllib.error.HTTPError as err:
                got = err.code
            assert got == expected, creds
        assert "s3cret-pass" not in b.logs()
    finally:
        b.stop()


def test_a_wrong_setting_stops_the_backend_with_its_message(tmp_path) -> None:
    with pytest.raises(RuntimeError, match=r"configuration error\): .*LLM_TIMEOUT") as info:
        Backend({"LLM_TIMEOUT": "soon"}, tmp_path)
    assert "Traceback" not in str(info.value)
