"""One example index per project and config in each process, kept in step with the example store.

Built in a background thread (so `/setup` never waits for it, even at 100,000 examples),
then refreshed from the store's change counter before each batch and after each webhook,
which also catches what other worker processes and replicas wrote: only the annotations
changed since the index's version are fetched.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time

from ..labeling.schema import LabelingSchema
from .index import CHUNK, ExampleIndex
from .retrieval import FewShotExamples, FewShotForm
from .store import ExampleStore, StoredAnnotation

logger = logging.getLogger(__name__)


class LiveIndex:
    """An `ExampleIndex` kept in step with the store by its change counter; built in the background."""

    def __init__(
        self, store: ExampleStore, project: str, schema: LabelingSchema, max_chars: int, delay: float = 0.0
    ) -> None:
        self.store = store
        self.project = project
        self.index = ExampleIndex(schema, max_chars)
        self.version = -1  # not loaded yet
        self._ready = threading.Event()
        self._sync = threading.Lock()
        self._delay = delay
        self._go = threading.Event()  # set by the first use: build now, do not wait out the delay
        self._soon = threading.Lock()  # held while a background refresh is waiting to start (`refresh_soon`)
        self._thread = threading.Thread(target=self._build, name=f"example-index-{project}", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        self._go.wait(self._delay)  # let the request that asked for it (/setup) answer first: the build holds the GIL
        started = time.monotonic()
        try:
            version, rows = self.store.raw_snapshot(self.project)
            for at in range(0, len(rows), CHUNK):  # parsed chunk by chunk: the peak memory stays small
                self.index.apply([StoredAnnotation.loads(a, p) for a, p in rows[at : at + CHUNK]], merge=False)
                rows[at : at + CHUNK] = [None] * len(rows[at : at + CHUNK])  # type: ignore[list-item]
            self.index.merge()
            self.version = version
            total = len(rows)
            del rows
            release_free_memory()
            logger.info(
                "示例索引已建立 (example index built): project %s, %d annotations, %d shown, %.2f s",
                self.project, total, len(self.index), time.monotonic() - started,
            )
        except Exception as exc:  # noqa: BLE001 - predictions go on without examples; retried on next use
            logger.warning("建立示例索引失败 (cannot build the example index): %s", exc)
        finally:
            self._ready.set()

    def current(self, wait: float = 60.0) -> ExampleIndex | None:
        """The index, refreshed from the store; None when it is not built within `wait` seconds."""
        self._go.set()
        if not self._ready.wait(wait):
            logger.warning("示例索引尚未建好，本批不使用示例 (example index not ready yet)")
            return None
        self.refresh()
        return self.index if self.version >= 0 else None

    def refresh_soon(self) -> None:
        """`refresh` in a background thread, one waiting at most: a webhook has about 1 s, and after a bulk change
        (100,000 annotations re-read) applying it took 6 s. Predictions refresh before they read the index anyway."""
        if not self._ready.is_set() or not self._soon.acquire(blocking=False):
            return  # not built yet (the build reads everything), or a refresh is already on its way

        def run() -> None:
            self._soon.release()  # from here a newer change schedules another refresh
            self.refresh()

        threading.Thread(target=run, name=f"example-index-refresh-{self.project}", daemon=True).start()

    def refresh(self) -> None:
        """Apply what changed in the store since our version (our own writes and other processes')."""
        if not self._ready.is_set():
            return
        with self._sync:
            try:
                if self.version < 0:  # the first build failed: try once more
                    version, items = self.store.snapshot(self.project)
                    self.index.apply(items)
                    self.version = version
                    return
                if self.store.version(self.project) == self.version:
                    return
                changes = self.store.changes(self.project, self.version)
                self.index.apply(changes.stored, changes.removed)
                self.version = changes.version
            except Exception as exc:  # noqa: BLE001 - a store hiccup keeps the last index
                logger.warning("刷新示例索引失败 (cannot refresh the example index): %s", exc)


def release_free_memory() -> None:
    """Give the heap freed by a bulk load back to the OS (glibc keeps it otherwise: ~180 MB at 100,000 examples)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): the memory is reused by the process instead
        pass


_live: dict[tuple[str, str, str, int], LiveIndex] = {}
_live_lock = threading.Lock()


def live_index(
    store: ExampleStore, project: str, schema: LabelingSchema, max_chars: int, delay: float = 0.0
) -> LiveIndex:
    """The process's index of this project under this config (its build started on first use, after `delay` s)."""
    key = (store.description, project, schema.config_hash, max_chars)
    with _live_lock:
        found = _live.get(key)
        if found is None:
            found = _live[key] = LiveIndex(store, project, schema, max_chars, delay)
        return found


class ProjectExamples:
    """A project's annotated examples in its chosen form, from the process's live index, fresh for each batch."""

    def __init__(
        self, store: ExampleStore, project: str, schema: LabelingSchema, max_chars: int, form: FewShotForm, budget: int
    ) -> None:
        self.store, self.project, self.schema, self.max_chars = store, project, schema, max_chars
        self.form, self.budget = form, budget

    def index(self) -> LiveIndex:
        return live_index(self.store, self.project, self.schema, self.max_chars)

    def for_batch(self) -> FewShotExamples | None:
        return FewShotExamples(self.index().current(), self.form, self.budget) if self.form.k else None
