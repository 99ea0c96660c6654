"""What an example store keeps and the interface every backend offers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class StoredAnnotation:
    annotation_id: int
    task_id: int
    data: dict[str, Any]
    results: list[dict[str, Any]]
    updated: float

    def dumps(self) -> str:
        return json.dumps(
            {"task_id": self.task_id, "data": self.data, "results": self.results, "updated": self.updated},
            ensure_ascii=False,
        )

    @classmethod
    def loads(cls, annotation_id: int, raw: str | bytes) -> StoredAnnotation:
        d = json.loads(raw)
        return cls(int(annotation_id), int(d["task_id"]), d["data"], d["results"], float(d["updated"]))


@dataclass(frozen=True)
class Changes:
    """What changed in a project after a version: rows now stored, and annotation ids now gone."""

    version: int
    stored: list[StoredAnnotation]
    removed: list[int]


class ExampleStore(Protocol):
    description: str

    def upsert(self, project: str, item: StoredAnnotation) -> None: ...

    def upsert_many(self, project: str, items: Iterable[StoredAnnotation]) -> None: ...

    def delete(self, project: str, annotation_ids: list[int]) -> int: ...

    def all(self, project: str) -> list[StoredAnnotation]: ...

    def raw_snapshot(self, project: str) -> tuple[int, list[tuple[int, str | bytes]]]: ...

    def version(self, project: str) -> int: ...

    def count(self, project: str) -> int: ...

    def changes(self, project: str, since: int) -> Changes: ...

    def get_meta(self, project: str, key: str) -> str | None: ...

    def set_meta(self, project: str, key: str, value: str) -> None: ...

    def counts(self) -> dict[str, int]: ...


class ParsedSnapshots:
    """`all` of a store, parsed from its `raw_snapshot`."""

    def raw_snapshot(self, project: str) -> tuple[int, list[tuple[int, str | bytes]]]:
        raise NotImplementedError

    def all(self, project: str) -> list[StoredAnnotation]:
        return [StoredAnnotation.loads(a, p) for a, p in self.raw_snapshot(project)[1]]
