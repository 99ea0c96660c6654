"""Learning from annotators with a real Label Studio: its webhooks and its Train button.

The backend's example store is observed from outside, as Label Studio observes it:
the `model_version` /setup reports (it moves with the example buckets 0, 1, 2, 4, …)
and the prompts the fake LLM receives.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import StartBackend, report
from tests.e2e.label_studio import LabelStudioClient, LabelStudioServer
from tests.e2e.test_label_studio_e2e import chat_requests, version_for, wait_for
from tests.fake_llm import server as fake

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="正面"/><Choice value="负面"/></Choices>
</View>"""
REVIEWS = ["快递很快，包装完好", "质量太差，退货", "客服态度很好", "颜色和图片不一样", "物超所值", "用了两天就坏了",
           "孩子很喜欢", "尺码偏小", "第二次购买了", "味道很奇怪", "性价比高", "发错货了"]


def sentiment(label: str) -> list[dict]:
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def answer(_body: dict) -> fake.Reply:
    return fake.chat(json.dumps({"sentiment": "正面"}, ensure_ascii=False))


def examples_in(prompt: str) -> int:
    return prompt.count("答案 (answer):")


def test_annotation_webhooks_fill_and_empty_the_example_set(
    ls: LabelStudioClient, start_backend: StartBackend, llm: fake.FakeLLMServer
) -> None:
    llm.set_responder(answer)
    backend = start_backend(FEWSHOT_EXAMPLES="3", LLM_ANSWER_STRATEGY="structured")  # no evaluation: every prompt shown
    project = ls.create_project("e2e learning", CONFIG)
    task_ids = ls.import_tasks(project, [{"data": {"text": t}} for t in REVIEWS])
    ls.add_ml_backend(project, backend.url)
    empty = version_for(backend, ls, project)

    # Ten annotators at once: every webhook must land (1 s timeout each on Label Studio's side).
    started = time.monotonic()
    labels = ["正面" if i % 2 == 0 else "负面" for i in range(10)]
    with ThreadPoolExecutor(max_workers=5) as pool:
        ids = list(pool.map(lambda i: ls.create_annotation(task_ids[i], sentiment(labels[i])), range(10)))
    assert wait_for(lambda: backend.logs().count("ANNOTATION_CREATED") >= 10), backend.logs()[-3000:]
    assert wait_for(lambda: version_for(backend, ls, project) != empty)
    eight = version_for(backend, ls, project)  # 10 examples -> bucket 8
    report(f"10 concurrent annotations -> 10 webhooks stored in {time.monotonic() - started:.2f} s")

    ls.retrieve_predictions(project)  # the two unannotated tasks (and the annotated ones) are predicted
    prompts = [r["body"]["messages"][-1]["content"] for r in chat_requests(llm)]
    assert prompts and all(examples_in(p) == 3 for p in prompts), [examples_in(p) for p in prompts]
    stored = ls.predictions(project)
    assert {p["model_version"] for p in stored} == {eight}

    # Deleting annotations removes their examples: 10 -> 3 is bucket 2, then 0.
    for annotation in ids[:7]:
        ls.delete_annotation(annotation)
    assert wait_for(lambda: backend.logs().count("ANNOTATIONS_DELETED") >= 7), backend.logs()[-3000:]
    two = version_for(backend, ls, project)
    assert two not in (empty, eight)
    for annotation in ids[7:]:
        ls.delete_annotation(annotation)
    assert wait_for(lambda: version_for(backend, ls, project) == empty), backend.logs()[-3000:]
    report("annotations deleted in Label Studio -> examples removed, model_version back to the empty set's")


def test_train_button_resyncs_annotations_made_while_the_backend_was_away(
    ls: LabelStudioClient,
    label_studio: LabelStudioServer,
    start_backend: StartBackend,
    llm: fake.FakeLLMServer,
) -> None:
    llm.set_responder(answer)
    project = ls.create_project("e2e resync", CONFIG)
    task_ids = ls.import_tasks(project, [{"data": {"text": t}} for t in REVIEWS[:6]])
    for i in range(4):  # no backend connected yet: no webhook saw these
        ls.create_annotation(task_ids[i], sentiment("负面"))
    creds = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.installation.token,
             "FEWSHOT_EXAMPLES": "3", "LLM_ANSWER_STRATEGY": "structured"}  # shown without an automatic evaluation
    backend = start_backend(**creds)
    ml = ls.add_ml_backend(project, backend.url)
    empty = version_for(backend, ls, project)

    ls.train(ml["id"])
    assert wait_for(lambda: "resynced 4 annotation(s)" in backend.logs()), backend.logs()[-3000:]
    four = version_for(backend, ls, project)
    assert four != empty
    assert label_studio.installation.token not in backend.logs()

    # Restart (same data dir): the examples are still there.
    port = backend.port
    data_dir = backend.log_dir.parent / "data"
    backend.stop()
    restarted = start_backend(port=port, DATA_DIR=str(data_dir), **creds)
    assert version_for(restarted, ls, project) == four
    ls.retrieve_predictions(project)
    prompt = chat_requests(llm)[-1]["body"]["messages"][-1]["content"]
    assert examples_in(prompt) == 3 and '{"sentiment": "负面"}' in prompt
    report("Train button re-read 4 annotations made before the backend was connected; kept across a restart")
