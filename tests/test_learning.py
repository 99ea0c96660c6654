"""Annotation events kept as examples: stored, replaced, removed, persistent, concurrent-safe."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from my_ml_backend.labeling.controls import OBJECT_TAGS
from my_ml_backend.labeling.schema import parse_schema
from my_ml_backend.learning.events import examples_bucket, record_event
from my_ml_backend.learning.examples import Example
from my_ml_backend.learning.index import ExampleIndex
from my_ml_backend.learning.store import RedisExampleStore, SQLiteExampleStore, StoredAnnotation, open_example_store
from my_ml_backend.settings import load_settings

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="正面"/><Choice value="负面"/></Choices>
</View>"""
SCHEMA = parse_schema(CONFIG, OBJECT_TAGS)


def event(annotation_id: int, task_id: int, label: str, text: str = "", **annotation: object) -> dict:
    result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
    return {
        "annotation": {"id": annotation_id, "result": result, "task": task_id, **annotation},
        "task": {"id": task_id, "data": {"text": text or f"任务 {task_id}", "unused": "x" * 100}},
        "project": {"id": 1},
    }


def shown(store: SQLiteExampleStore | RedisExampleStore, project: str = "1") -> list[Example]:
    """The examples a task of `project` may be shown, read from the store as the project's index reads them."""
    index = ExampleIndex(SCHEMA, 4000)
    index.apply(store.all(project))
    return index.shown()


def pool_of(store: SQLiteExampleStore | RedisExampleStore) -> dict[int, object]:
    return {e.task_id: e.answers["sentiment"] for e in shown(store)}


def test_created_updated_cancelled_and_deleted_annotations(tmp_path: Path) -> None:
    store = SQLiteExampleStore(tmp_path / "ex.sqlite3")
    record_event(store, SCHEMA, "1", "ANNOTATION_CREATED", event(10, 1, "正面"))
    record_event(store, SCHEMA, "1", "ANNOTATION_CREATED", event(11, 2, "负面"))
    assert pool_of(store) == {1: "正面", 2: "负面"}
    record_event(store, SCHEMA, "1", "ANNOTATION_UPDATED", event(10, 1, "负面"))
    assert pool_of(store) == {1: "负面", 2: "负面"}
    assert store.all("1")[0].data == {"text": "任务 1"}  # only the fields the config reads
    record_event(store, SCHEMA, "1", "ANNOTATION_UPDATED", event(11, 2, "负面", was_cancelled=True))
    assert pool_of(store) == {1: "负面"}
    message = record_event(store, SCHEMA, "1", "ANNOTATIONS_DELETED", {"annotations": [{"id": 10}, {"id": 99}]})
    assert message == "1 of 2 annotation(s) removed"
    assert pool_of(store) == {}
    assert shown(store, "2") == []  # projects are separate


def test_newest_annotation_of_a_task_wins_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ex.sqlite3"
    store = SQLiteExampleStore(path)
    record_event(store, SCHEMA, "1", "ANNOTATION_CREATED", event(20, 5, "正面"))
    record_event(store, SCHEMA, "1", "ANNOTATION_CREATED", event(21, 5, "负面"))  # a second annotator
    store.close()  # the process ends
    reopened = SQLiteExampleStore(path)
    assert pool_of(reopened) == {5: "负面"}
    record_event(reopened, SCHEMA, "1", "ANNOTATIONS_DELETED", {"annotations": [{"id": 21}]})
    assert pool_of(reopened) == {5: "正面"}  # the other annotator's answer remains


def _write_many(path: str, start: int) -> None:
    store = SQLiteExampleStore(Path(path))
    for i in range(start, start + 100):
        record_event(store, SCHEMA, "1", "ANNOTATION_CREATED", event(i, i, "正面"))


def test_concurrent_webhooks_from_threads_and_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ex.sqlite3"
    store = SQLiteExampleStore(path)
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_write_many, args=(str(path), start)) for start in (10_000, 20_000)]
    for proc in procs:
        proc.start()

    def webhook(i: int) -> str:
        return record_event(store, SCHEMA, "1", "ANNOTATION_CREATED", event(i, i, "负面"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(webhook, range(400)))
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert len(store.all("1")) == 600


def test_version_bucket_changes_on_powers_of_two_only() -> None:
    assert [examples_bucket(n) for n in (0, 1, 2, 3, 4, 7, 8, 100)] == [0, 1, 2, 2, 4, 4, 8, 64]


def test_redis_example_store_shares_examples_between_replicas(redis_db: str) -> None:
    first, second = RedisExampleStore(redis_db), RedisExampleStore(redis_db)  # two backend replicas
    record_event(first, SCHEMA, "1", "ANNOTATION_CREATED", event(30, 3, "正面"))
    record_event(second, SCHEMA, "1", "ANNOTATION_CREATED", event(31, 4, "负面"))
    assert pool_of(first) == pool_of(second) == {3: "正面", 4: "负面"}
    record_event(second, SCHEMA, "1", "ANNOTATIONS_DELETED", {"annotations": [{"id": 30}]})
    assert pool_of(first) == {4: "负面"}
    assert shown(first, "2") == []


def test_redis_counts_are_examples_per_project_and_nothing_else(redis_db: str, tmp_path: Path) -> None:
    """The status page's example counts with REDIS_URL set: a project's version, changes and meta keys share
    its prefix and are of other types (string, sorted set), so they must not be read as example hashes."""
    store = open_example_store(load_settings({"REDIS_URL": redis_db, "DATA_DIR": str(tmp_path)}))
    assert isinstance(store, RedisExampleStore)
    store.upsert_many("1", [stored(a, a) for a in (10, 11, 12)])
    store.upsert_many("2", [stored(20, 2), stored(21, 3)])
    store.delete("2", [21])
    store.set_meta("1", "fewshot_choice:abc", "{}")
    store.set_meta("2", "fewshot_choice:abc", "{}")
    store.set_meta("3", "fewshot_choice:abc", "{}")  # a choice stored, no example yet
    raw = redis.Redis.from_url(redis_db)
    kinds = {raw.type(key).decode() for key in raw.keys("*")}
    assert kinds == {"hash", "string", "zset"}  # what made HLEN raise WRONGTYPE
    assert store.counts() == {"1": 3, "2": 1}
    assert (store.count("1"), store.count("2"), store.count("3")) == (3, 1, 0)


def stored(annotation_id: int, task_id: int) -> StoredAnnotation:
    result = event(annotation_id, task_id, "正面")["annotation"]["result"]
    return StoredAnnotation(annotation_id, task_id, {"text": f"任务 {task_id}"}, result, 1.0)
