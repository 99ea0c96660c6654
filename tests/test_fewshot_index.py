"""The example index: in step with the store across processes and restarts, relevant, never the task itself."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from pathlib import Path

import pytest

from my_ml_backend.labeling.controls import OBJECT_TAGS
from my_ml_backend.labeling.schema import parse_schema
from my_ml_backend.learning.events import record_event
from my_ml_backend.learning.examples import Example, example_from_annotation
from my_ml_backend.learning.index import ExampleIndex
from my_ml_backend.learning.live import LiveIndex
from my_ml_backend.learning.retrieval import FewShotExamples, FewShotForm, choose
from my_ml_backend.learning.store import RedisExampleStore, SQLiteExampleStore
from tests import store_writer
from tests.test_learning import SCHEMA, event

PROJECT = "1"


def answers(live: LiveIndex) -> dict[int, str]:
    index = live.current(wait=30)
    assert index is not None
    return {e.task_id: e.answers["sentiment"] for e in index.shown()}


def in_other_process(path: Path, write: object, annotation_id: int, label: str = "正面") -> None:
    """Another worker process receiving a webhook (it stores what `record_event` would)."""
    args = (str(path), PROJECT, annotation_id, label)
    proc = multiprocessing.get_context("spawn").Process(target=write, args=args)
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0


def test_index_sees_creates_updates_and_deletes_made_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "examples.sqlite3"
    store = SQLiteExampleStore(path)
    record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(1, 1, "正面", "物流很快"))
    live = LiveIndex(store, PROJECT, SCHEMA, 4000)
    assert answers(live) == {1: "正面"}
    version = live.version

    in_other_process(path, store_writer.upsert, 2, "负面")  # created
    assert answers(live) == {1: "正面", 2: "负面"}
    in_other_process(path, store_writer.upsert, 2, "正面")  # updated
    assert answers(live) == {1: "正面", 2: "正面"}
    in_other_process(path, store_writer.delete, 1)
    assert answers(live) == {2: "正面"}
    assert live.version == version + 3  # one change each, fetched incrementally

    # The same writes seen by a second store object of this process (its own connection).
    assert store.count(PROJECT) == 1 and store.version(PROJECT) == live.version


def test_a_restarted_process_rebuilds_the_same_index_from_the_store(tmp_path: Path) -> None:
    path = tmp_path / "examples.sqlite3"
    store = SQLiteExampleStore(path)
    for i in range(1, 30):
        label = "正面" if i % 3 else "负面"
        record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(i, i, label, f"评论 {i} 号"))
    # Task 5 annotated again by someone else: the newer answer is shown.
    record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(100, 5, "负面", "评论 5 号"))
    record_event(store, SCHEMA, PROJECT, "ANNOTATIONS_DELETED", {"annotations": [{"id": 7}]})
    before = answers(LiveIndex(store, PROJECT, SCHEMA, 4000))
    store.close()  # the process ends

    reopened = SQLiteExampleStore(path)
    after = answers(LiveIndex(reopened, PROJECT, SCHEMA, 4000))
    assert after == before and len(after) == 28 and after[5] == "负面" and 7 not in after


class SlowStore(SQLiteExampleStore):
    """A store whose full read waits for a signal: a 100,000-example project on a slow disk."""

    release = threading.Event()

    def raw_snapshot(self, project: str) -> tuple[int, list]:
        self.release.wait(30)
        return super().raw_snapshot(project)


def test_building_the_index_never_blocks_the_caller(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "examples.sqlite3")
    record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(1, 1, "正面"))
    started = time.monotonic()
    live = LiveIndex(store, PROJECT, SCHEMA, 4000)
    assert time.monotonic() - started < 0.5 and store.count(PROJECT) == 1  # what /setup needs, at once
    assert live.current(wait=0.2) is None  # a batch arriving meanwhile goes zero-shot rather than hang
    SlowStore.release.set()
    assert answers(live) == {1: "正面"}


def test_concurrent_webhooks_from_processes_all_reach_the_index(tmp_path: Path) -> None:
    path = tmp_path / "examples.sqlite3"
    store = SQLiteExampleStore(path)
    live = LiveIndex(store, PROJECT, SCHEMA, 4000)
    assert answers(live) == {}
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=store_writer.upsert_many, args=(str(path), PROJECT, start))
        for start in (10_000, 20_000, 30_000)
    ]
    for proc in procs:
        proc.start()
    seen = []
    while any(p.is_alive() for p in procs):  # refreshing while they write: each change fetched once
        seen.append(len(answers(live)))
        time.sleep(0.05)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert len(answers(live)) == 300 and store.version(PROJECT) == 300
    assert seen == sorted(seen)


def test_index_over_redis_sees_another_replicas_writes(redis_db: str) -> None:
    first, second = RedisExampleStore(redis_db), RedisExampleStore(redis_db)
    record_event(first, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(1, 1, "正面"))
    live = LiveIndex(first, PROJECT, SCHEMA, 4000)
    assert answers(live) == {1: "正面"}
    record_event(second, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(2, 2, "负面"))
    record_event(second, SCHEMA, PROJECT, "ANNOTATION_UPDATED", event(1, 1, "负面"))
    assert answers(live) == {1: "负面", 2: "负面"}
    record_event(second, SCHEMA, PROJECT, "ANNOTATIONS_DELETED", {"annotations": [{"id": 2}]})
    assert answers(live) == {1: "负面"} and first.count(PROJECT) == 1 and first.version(PROJECT) == 4
    first.set_meta(PROJECT, "fewshot_choice:h", "{}")  # a project's :version, :changes and :meta keys are no counts
    assert first.counts() == {PROJECT: 1}  # the status page's figure (it raised WRONGTYPE and showed 0)


def reviews(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    words = ["物流", "包装", "质量", "客服", "价格", "屏幕", "电池", "味道", "尺码", "颜色", "发货", "做工",
             "很快", "太慢", "不错", "很差", "满意", "失望", "推荐", "退货", "一般", "超值", "正品", "破损"]
    return [
        Example(i, {"text": "，".join(rng.choice(words) + rng.choice(words) for _ in range(rng.randint(3, 8)))},
                {"sentiment": rng.choice(["正面", "负面"])})
        for i in range(n)
    ]


def test_a_near_copy_of_a_stored_example_retrieves_it() -> None:
    pool = reviews(5000)
    index = ExampleIndex.from_examples(pool, SCHEMA)
    rng = random.Random(1)
    picks = rng.sample(pool, 200)
    hits = 0
    for example in picks:
        text = list(example.texts["text"])
        del text[rng.randrange(len(text))]
        text[rng.randrange(len(text))] = "哈"
        ranked = index.ranked({"text": "".join(text)}, exclude_task=-1, limit=1)
        hits += ranked[0].example.task_id == example.task_id
    assert hits / len(picks) >= 0.95, hits


def test_the_task_itself_is_never_its_own_example() -> None:
    pool = reviews(50)
    index = ExampleIndex.from_examples(pool, SCHEMA)
    task = pool[10]
    for form in (FewShotForm(3, "block"), FewShotForm(3, "chat"), FewShotForm(2, "labels")):
        by_id = choose(index, {"text": task.texts["text"] + "！"}, form, 10_000, task_id=task.task_id)
        by_text = choose(index, task.texts, form, 10_000, task_id=None)
        assert by_id and by_text and task not in by_id and task not in by_text, form


def test_forms_choose_and_render_examples_differently() -> None:
    pool = [Example(i, {"text": t}, {"sentiment": s}) for i, (t, s) in enumerate([
        ("物流很快，包装完好", "正面"), ("物流很快，质量很好", "正面"), ("物流很快，质量不错", "正面"),
        ("物流太慢，包装破损", "负面"), ("价格超值", "正面"),
    ])]
    index = ExampleIndex.from_examples(pool, SCHEMA)
    texts = {"text": "物流很快，包装不错"}
    labels = choose(index, texts, FewShotForm(1, "labels"), 10_000)
    assert sorted(e.answers["sentiment"] for e in labels) == ["正面", "负面"]  # one per label, most similar last
    assert labels[-1].task_id == 0
    block = FewShotExamples(index, FewShotForm(2, "block"), 10_000).messages(SCHEMA, texts, _guidance())
    assert len(block) == 2 and "示例 1" in block[1]["content"] and "物流很快，包装完好" in block[1]["content"]
    chat = FewShotExamples(index, FewShotForm(2, "chat"), 10_000).messages(SCHEMA, texts, _guidance())
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "物流很快，包装完好" in chat[3]["content"] and chat[4]["content"] == '{"sentiment": "正面"}'
    assert "物流很快，包装不错" in chat[-1]["content"] and "示例" not in chat[-1]["content"]
    zero_shot = FewShotExamples(index, FewShotForm(0), 10_000).messages(SCHEMA, texts, _guidance())
    assert zero_shot[1]["content"] == chat[-1]["content"]


def _guidance():  # noqa: ANN202
    from my_ml_backend.labeling.prompts import PromptGuidance

    return PromptGuidance()


@pytest.mark.parametrize(("name", "form"), [("0", FewShotForm(0)), ("3", FewShotForm(3, "block")),
                                            ("chat-2", FewShotForm(2, "chat")), ("labels-1", FewShotForm(1, "labels")),
                                            ("per-label-1", FewShotForm(1, "per-label")), ("block-0", FewShotForm(0))])
def test_form_names(name: str, form: FewShotForm) -> None:
    assert FewShotForm.parse(name) == form
    assert FewShotForm.parse(form.name) == form
    with pytest.raises(ValueError):
        FewShotForm.parse("poetry-3")


def test_the_per_label_form_keeps_the_model_version_it_had_as_labels() -> None:
    """Renaming the style must not make Label Studio predict every task of an existing project again."""
    from my_ml_backend.settings import load_settings
    from my_ml_backend.versioning import model_version
    from tests.conftest import TEST_KEY

    settings = load_settings({"MODELSCOPE_API_KEY": TEST_KEY})
    assert FewShotForm.parse("labels-1").name == "per-label-1"
    assert model_version(settings, "c", "", 2, "per-label-1") == model_version(settings, "c", "", 2, "labels-1")
    assert model_version(settings, "c", "", 2, "per-label-1") != model_version(settings, "c", "", 2, "chat-1")


def test_an_unreadable_annotation_is_skipped_and_the_next_ones_still_become_examples(tmp_path: Path) -> None:
    """Results not shaped as Label Studio writes them (imported through the API) used to stop every refresh of the
    index at that annotation: later annotations were never shown, and after a restart the project had none."""
    store = SQLiteExampleStore(tmp_path / "examples.sqlite3")
    live = LiveIndex(store, PROJECT, SCHEMA, 4000)
    record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(1, 1, "负面", "评论 1 号"))
    assert answers(live) == {1: "负面"}
    for aid, value in ((2, {"choices": 5}), (3, {"choices": [["正面"]]}), (4, "正面"), (5, {"choices": None})):
        bad = event(aid, aid, "正面", f"评论 {aid} 号")
        bad["annotation"]["result"][0]["value"] = value
        record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", bad)
    record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(6, 6, "正面", "评论 6 号"))
    live.refresh()
    assert answers(live) == {1: "负面", 6: "正面"}
    assert answers(LiveIndex(store, PROJECT, SCHEMA, 4000)) == {1: "负面", 6: "正面"}  # a restart builds it too


def test_a_label_removed_from_the_config_is_no_longer_taught_by_examples() -> None:
    old = SCHEMA
    new = parse_schema("""<View><Text name="text" value="$text"/>
      <Choices name="sentiment" toName="text"><Choice value="正面"/><Choice value="中性"/></Choices></View>""",
                       OBJECT_TAGS)
    results = event(1, 1, "负面")["annotation"]["result"]
    task = {"id": 1, "data": {"text": "一般"}}
    assert example_from_annotation(old, task, results, 4000) is not None
    assert example_from_annotation(new, task, results, 4000) is None  # "负面" is gone: neither shown nor gold
    spans = parse_schema("""<View><Text name="text" value="$text"/>
      <Labels name="ner" toName="text"><Label value="PER"/></Labels></View>""", OBJECT_TAGS)
    found = [{"from_name": "ner", "to_name": "text", "type": "labels",
              "value": {"start": s, "end": e, "text": t, "labels": [label]}}
             for s, e, t, label in ((0, 2, "张三", "PER"), (3, 5, "北京", "LOC"), (6, 8, "上海", 5))]
    assert example_from_annotation(spans, {"id": 2, "data": {"text": "张三在北京和上海"}}, found, 4000).answers == {
        "ner": [{"label": "PER", "text": "张三"}]}


class SlowChanges(SQLiteExampleStore):
    """A store whose change feed waits for a signal: applying a bulk re-read of 100,000 annotations (6 s)."""

    release = threading.Event()

    def changes(self, project: str, since: int):  # noqa: ANN201 - the store's own type
        self.release.wait(30)
        return super().changes(project, since)


def test_a_webhook_never_waits_for_the_index_to_apply_changes(tmp_path: Path) -> None:
    store = SlowChanges(tmp_path / "examples.sqlite3")
    record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(1, 1, "正面"))
    live = LiveIndex(store, PROJECT, SCHEMA, 4000)
    assert live.current(wait=30) is not None
    record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(2, 2, "负面"))
    started = time.monotonic()
    live.refresh_soon()  # what a webhook does now
    live.refresh_soon()  # a second webhook meanwhile: still one refresh on its way
    assert time.monotonic() - started < 0.5
    SlowChanges.release.set()
    for _ in range(100):
        if live.version == store.version(PROJECT):
            break
        time.sleep(0.05)
    assert {e.task_id: e.answers["sentiment"] for e in live.index.shown()} == {1: "正面", 2: "负面"}


def test_train_rewrites_only_the_annotations_that_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Train button re-reads the project from Label Studio. Writing back every annotation as new made every
    worker's index apply the whole project again (6.2 s of a webhook at 100,000 before it went to the background)."""
    import label_studio_sdk

    from my_ml_backend.learning.events import resync

    store = SQLiteExampleStore(tmp_path / "examples.sqlite3")
    for i in (1, 2, 3):
        record_event(store, SCHEMA, PROJECT, "ANNOTATION_CREATED", event(i, i, "正面", f"评论 {i} 号"))
    labels = {1: "正面", 2: "负面", 3: "正面"}  # annotation 2 was changed while the backend was down

    class Task:
        def __init__(self, i: int) -> None:
            self.i = i

        def dict(self) -> dict:
            found = event(self.i, self.i, labels[self.i], f"评论 {self.i} 号")
            return {**found["task"], "annotations": [found["annotation"]]}

    class StandIn:
        def __init__(self, base_url: str, api_key: str) -> None:
            self.tasks = type("Tasks", (), {"list": lambda *_a, **_k: [Task(i) for i in labels]})()

    monkeypatch.setattr(label_studio_sdk, "LabelStudio", StandIn)
    before = store.version(PROJECT)
    said = resync(store, SCHEMA, PROJECT, "http://ls", "key")
    assert said == "resynced 3 annotation(s) from Label Studio, 1 new or changed, 0 stale removed"
    assert store.changes(PROJECT, before).stored[0].annotation_id == 2 and store.version(PROJECT) == before + 1
    assert {a.annotation_id: a.results[0]["value"]["choices"] for a in store.all(PROJECT)}[2] == ["负面"]
