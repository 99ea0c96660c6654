"""A project's examples as a retrieval index: character bigrams in scipy sparse matrices.

Why an index: scoring every stored example in Python per task grew linearly with the
project (1.5 s per task at 10,000 examples). Here each example is a row of hashed
character-bigram counts (the hashing trick: stateless, so rows can be added without
refitting; bigrams keep Chinese working without word segmentation) in a scipy sparse
matrix kept column-major (CSC), so that a query touches only the columns of its own
bigrams. Scores are the l2-normalised rows times the query's counts weighted by IDF,
which the index keeps up to date as rows come and go: rare shared bigrams count more
than "的" or "。".

The bigrams are hashed with numpy over a whole batch of texts at once rather than with
scikit-learn's `HashingVectorizer` (same features: lower-cased, whitespace collapsed,
char 2-grams, l2 norm): its per-character Python loop took 15 s for 100,000 examples,
holding the GIL while the server answered, and importing scikit-learn cost ~60 MB.

Rows are annotations. Like the store's reading before it, only the newest annotation
of each task is shown (a re-annotated task shows its latest answer); an updated or
deleted annotation's row is retired (not shown) and the matrix is compacted when half
of it is retired. New rows go to a small tail block merged into the main one in bulk.

`learning.live` keeps one such index per project in step with the store.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ..labeling.schema import LabelingSchema
from .examples import Example, example_from_annotation
from .store import StoredAnnotation

logger = logging.getLogger(__name__)

FEATURES = 2**20
CANDIDATES = 32  # best-scoring rows the greedy choice looks at (k is small)
MERGE_MIN = 2048  # tail rows merged into the main block from this many (or 10 % of it) on
CHUNK = 10_000  # rows vectorised at once (bounds the temporary arrays)


def vectorize(texts: Sequence[str]) -> sp.csr_matrix:
    """One row per text: l2-normalised counts of its hashed character bigrams (lower-cased, spaces collapsed)."""
    joined = "\0".join(" ".join(t.replace("\0", " ").lower().split()) for t in texts) + "\0"
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    ends = codes == 0
    row = np.cumsum(ends) - ends  # the text each character belongs to
    pair = ~ends[:-1] & ~ends[1:]
    mixed = (codes[:-1][pair] * np.uint64(0x9E3779B97F4A7C15) + codes[1:][pair]) * np.uint64(0xBF58476D1CE4E5B9)
    columns = (mixed >> np.uint64(40)) & np.uint64(FEATURES - 1)
    matrix = sp.csr_matrix(
        (np.ones(len(columns), dtype=np.float32), (row[:-1][pair], columns.astype(np.int64))),
        shape=(len(texts), FEATURES), dtype=np.float32,
    )  # duplicates summed: bigram counts
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1), dtype=np.float32).ravel())
    matrix.data /= np.repeat(np.where(norms > 0, norms, 1), np.diff(matrix.indptr))
    return matrix


def text_of(texts: dict[str, str]) -> str:
    return "\n".join(texts.values())


def signature(example: Example) -> str:
    """The example's whole answer as a string: examples with equal signatures teach the same thing."""
    return json.dumps(example.answers, ensure_ascii=False, sort_keys=True)


def label_of(example: Example, schema: LabelingSchema | None) -> str:
    """The class used for label balance: the first choices/taxonomy answer, else the whole answer."""
    for target in schema.targets if schema else ():
        if target.tag in ("choices", "taxonomy") and target.name in example.answers:
            return json.dumps(example.answers[target.name], ensure_ascii=False, sort_keys=True)
    return signature(example)


def example_size(example: Example, answer: str | None = None) -> int:
    """Characters the example adds to the prompt."""
    return sum(len(t) for t in example.texts.values()) + len(answer or signature(example)) + 20


class Hit(NamedTuple):
    """A retrieved example, its similarity, its answer signature and its size in the prompt."""

    score: float
    example: Example
    signature: str
    size: int


class ExampleIndex:
    """The examples of one project under one labeling config, searchable by text similarity. Thread-safe."""

    def __init__(self, schema: LabelingSchema | None, max_chars: int) -> None:
        self.schema = schema  # None for a plain list of examples (no annotation to read)
        self.max_chars = max_chars
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._examples: list[Example | None] = []
        self._signatures: list[str] = []
        self._tasks: list[int] = []
        self._updated: list[float] = []
        self._labels = np.zeros(0, dtype=np.int32)  # label code per row, for label balance
        self._label_codes: dict[str, int] = {}
        self._answers: dict[str, tuple[str, dict]] = {}  # one signature string and answers dict per distinct answer
        self._alive = np.zeros(0, dtype=bool)  # the row is the annotation's current version
        self._shown = np.zeros(0, dtype=bool)  # ... and the newest of its task, with a usable example
        self._by_annotation: dict[int, int] = {}
        self._by_task: dict[int, set[int]] = {}
        self._main = sp.csc_matrix((0, FEATURES), dtype=np.float32)
        self._tail_rows: list[sp.csr_matrix] = []
        self._tail: sp.csc_matrix | None = None
        self._df = np.zeros(FEATURES, dtype=np.int32)

    @classmethod
    def from_examples(cls, examples: Iterable[Example], schema: LabelingSchema | None = None) -> ExampleIndex:
        """An index over a plain list (the evaluation command's leave-one-out pool)."""
        index = cls(schema, 0)
        index._add([(n, e.task_id, 0.0, e) for n, e in enumerate(examples)])
        return index

    def __len__(self) -> int:
        with self._lock:
            return int(self._shown.sum())

    def shown(self) -> list[Example]:
        """The examples a task may be shown (newest annotation of each task), in row order."""
        with self._lock:
            return [e for r in np.flatnonzero(self._shown) if (e := self._examples[r]) is not None]

    def labels(self) -> int:
        """Distinct labels among the examples shown."""
        with self._lock:
            return len(np.unique(self._labels[self._shown]))

    # -- updates ------------------------------------------------------------------------

    def apply(self, stored: Sequence[StoredAnnotation], removed: Iterable[int] = (), merge: bool = True) -> None:
        """Rows written (new or changed annotations) and annotation ids deleted, in one step.

        `merge=False` leaves new rows in the tail block (a bulk load merges once, at its end).
        """
        assert self.schema is not None or not stored, "reading annotations needs the labeling config"
        rows = []
        for item in stored:
            try:
                example = example_from_annotation(
                    self.schema, {"id": item.task_id, "data": item.data}, item.results, self.max_chars
                )
            except Exception:  # noqa: BLE001 - one unreadable annotation must not freeze the project's index
                logger.warning("标注 %s 无法读取，不作为示例 (annotation %s cannot be read: not an example)",
                               item.annotation_id, item.annotation_id, exc_info=True)
                example = None
            rows.append((item.annotation_id, item.task_id, item.updated, example))
        with self._lock:
            touched = {self._retire(a) for a in removed} | {self._retire(r[0]) for r in rows}
            self._add(rows, merge)
            for task in touched - {None}:
                self._choose_shown(task)
            if len(self._examples) > 1000 and self._alive.sum() < len(self._examples) / 2:
                self._compact()

    def _retire(self, annotation_id: int) -> int | None:
        row = self._by_annotation.pop(annotation_id, None)
        if row is None:
            return None
        self._alive[row] = self._shown[row] = False
        task = self._tasks[row]
        self._by_task[task].discard(row)
        return task

    def _add(self, rows: Sequence[tuple[int, int, float, Example | None]], merge: bool = True) -> None:
        if not rows:
            return
        start = len(self._examples)
        for at in range(0, len(rows), CHUNK):
            vectors = vectorize([text_of(e.texts) if e else "" for _, _, _, e in rows[at : at + CHUNK]])
            self._df += np.bincount(vectors.indices, minlength=FEATURES).astype(np.int32)
            self._tail_rows.append(vectors)
        self._tail = None
        self._alive = np.concatenate([self._alive, np.ones(len(rows), dtype=bool)])
        self._shown = np.concatenate([self._shown, np.zeros(len(rows), dtype=bool)])
        codes = []
        for n, (annotation, task, updated, example) in enumerate(rows, start=start):
            sig = ""
            if example is not None:  # equal answers share one object (100,000 examples, a few labels)
                sig, answers = self._answers.setdefault(signature(example), (signature(example), example.answers))
                example = Example(example.task_id, example.texts, answers)
            self._examples.append(example)
            self._signatures.append(sig)
            self._tasks.append(task)
            self._updated.append(updated)
            label = label_of(example, self.schema) if example else ""
            codes.append(self._label_codes.setdefault(label, len(self._label_codes)))
            self._by_annotation[annotation] = n
            self._by_task.setdefault(task, set()).add(n)
        self._labels = np.concatenate([self._labels, np.asarray(codes, dtype=np.int32)])
        for task in {r[1] for r in rows}:
            self._choose_shown(task)
        tail = sum(m.shape[0] for m in self._tail_rows)
        if merge and tail >= max(MERGE_MIN, self._main.shape[0] // 10):
            self.merge()

    def merge(self) -> None:
        """Move the tail block's rows into the main block."""
        with self._lock:
            if self._tail_rows:
                self._main = sp.vstack([self._main, *self._tail_rows], format="csc")
                self._tail_rows, self._tail = [], None

    def _choose_shown(self, task: int) -> None:
        """Only the newest annotation of a task is shown (ties: the later row, as the store's id order)."""
        rows = self._by_task.get(task) or set()
        for row in rows:
            self._shown[row] = False
        if rows:
            newest = max(rows, key=lambda r: (self._updated[r], r))
            self._shown[newest] = self._examples[newest] is not None

    def _compact(self) -> None:
        """Rebuild without retired rows (done when they are half of the matrix)."""
        keep = [(a, self._tasks[r], self._updated[r], self._examples[r]) for a, r in self._by_annotation.items()]
        self._reset()
        self._add(keep)

    # -- selection ----------------------------------------------------------------------

    def _scores(self, text: str) -> np.ndarray:
        query = vectorize([text])
        columns = query.indices
        n = len(self._examples)
        if not len(columns):
            return np.zeros(n, dtype=np.float32)
        weights = query.data * (np.log((n + 1) / (self._df[columns] + 1)) + 1).astype(np.float32)
        if self._tail is None and self._tail_rows:
            self._tail = sp.vstack(self._tail_rows, format="csc")
        blocks = [self._main, *([self._tail] if self._tail is not None and self._tail_rows else [])]
        return np.concatenate([block[:, columns] @ weights for block in blocks]).astype(np.float32)

    def _hit(self, row: int, score: float) -> Hit:
        example = self._examples[row]
        assert example is not None
        return Hit(score, example, self._signatures[row], example_size(example, self._signatures[row]))

    def ranked(self, texts: dict[str, str], *, exclude_task: int | None = None, limit: int = CANDIDATES) -> list[Hit]:
        """The most similar examples shown, best first, never the task itself (same id or same text)."""
        text = text_of(texts)
        with self._lock:
            if not self._shown.any():
                return []
            scores = np.where(self._shown, self._scores(text), -1.0)
            order = self._top(scores, limit + 4)
            found = []
            for row in order:
                example = self._examples[row]
                if scores[row] < 0 or example is None:
                    break
                if example.task_id == exclude_task or text_of(example.texts) == text:
                    continue
                found.append(self._hit(row, float(scores[row])))
                if len(found) >= limit:
                    break
            return found

    @staticmethod
    def _top(scores: np.ndarray, limit: int) -> np.ndarray:
        if len(scores) > limit:
            part = np.argpartition(-scores, limit)[:limit]
            return part[np.lexsort((part, -scores[part]))]
        return np.lexsort((np.arange(len(scores)), -scores))

    def per_label(
        self, texts: dict[str, str], each: int = 1, *, exclude_task: int | None = None, most: int = 8
    ) -> list[Hit]:
        """The `each` most similar examples of every label (up to `most` labels, best-matching first), best first."""
        text = text_of(texts)
        with self._lock:
            if not self._shown.any():
                return []
            scores = np.where(self._shown, self._scores(text), -1.0)
            codes = np.unique(self._labels[self._shown])
            if len(codes) > 2 * most:  # many labels: those of the nearest rows
                codes = np.unique(self._labels[self._top(scores, 32 * most)])
            groups: list[list[Hit]] = []
            for code in codes:
                masked = np.where(self._labels == code, scores, -1.0)
                group: list[Hit] = []
                for row in self._top(masked, each + 4):
                    example = self._examples[row]
                    if masked[row] < 0 or example is None or len(group) >= each:
                        break
                    if example.task_id != exclude_task and text_of(example.texts) != text:
                        group.append(self._hit(row, float(masked[row])))
                if group:
                    groups.append(group)
            groups.sort(key=lambda g: (-g[0].score, g[0].example.task_id))
            return sorted((h for g in groups[:most] for h in g), key=lambda h: (-h.score, h.example.task_id))


def diverse_choice(ranked: Sequence[Hit], k: int, budget_chars: int) -> list[Example]:
    """Up to `k` examples within `budget_chars`: first the best of each distinct answer, then by similarity.

    So a 9-to-1 label imbalance in the pool does not become 3-to-0 in the prompt.
    """
    chosen: list[int] = []
    used = 0
    seen: set[str] = set()
    for diverse_pass in (True, False):
        for n, hit in enumerate(ranked):
            if len(chosen) >= k:
                break
            if n in chosen or (diverse_pass and hit.signature in seen) or used + hit.size > budget_chars:
                continue
            chosen.append(n)
            seen.add(hit.signature)
            used += hit.size
    return [ranked[n].example for n in chosen]
