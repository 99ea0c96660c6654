"""The durable queue of imported tasks: which tasks wait, each project's import job, who is working on it.

A webhook adds the task ids and answers at once; a worker takes a project (a lease, so one
worker at a time predicts it: the shared `LLM_CONCURRENCY` is a per-process limit without
Redis) and works through its pending ids in chunks. An id is queued once per project
ever, so a repeated webhook never predicts a task twice; an id stays pending until its
prediction is posted (or the task turns out to have one already, or to be gone), so a
worker killed with `kill -9` loses nothing: the next one, after the lease runs out,
looks the pending ids up in Label Studio again before predicting them.

Where: SQLite in `DATA_DIR` (the processes of one machine, an in-process worker thread),
or Redis when `REDIS_URL` is set (`rq worker` processes anywhere take the work).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

KEEP_SECONDS = 30 * 86400  # finished jobs, and the ids they queued (re-sent webhooks find them), are kept this long
SHOWN_JOBS = 10  # jobs `jobs()` lists: open ones first, then the newest finished


@dataclass
class ImportJob:
    """One project's import job: the tasks queued since it was last idle, and what became of them."""

    id: int
    project: int
    started: float
    updated: float
    finished: float | None = None
    total: int = 0  # tasks queued
    posted: int = 0  # predictions posted
    skipped: int = 0  # already had one of this model_version, or deleted since
    failed: int = 0
    calls: int = 0  # LLM requests spent (retries included)
    busy: float = 0.0  # seconds spent predicting and posting (waits excluded): the ETA's pace
    waiting_until: float | None = None  # the quota comes back then
    next_try: float = 0.0  # a worker takes the project again from then on
    note: str = ""  # why it waits or stopped, for the status page
    errors: Counter[str] = field(default_factory=Counter)  # failure reasons -> tasks

    @property
    def left(self) -> int:
        return max(0, self.total - self.posted - self.skipped - self.failed)

    def eta(self) -> float | None:
        """Seconds of work left at the pace so far (waits not included); None before the first chunk."""
        handled = self.posted + self.skipped + self.failed
        return self.left * self.busy / handled if handled and self.busy > 0 else None


class ImportQueue(Protocol):
    def add(self, project: int, task_ids: Sequence[int]) -> int:
        """Queue the ids not queued before for `project` (in its open job, or a new one); how many were new."""

    def pending(self, project: int, limit: int) -> list[int]:
        """Up to `limit` pending ids of `project`, oldest first."""

    def settle(self, project: int, posted: Sequence[int] = (), skipped: Sequence[int] = (), failed: Sequence[int] = (),
               errors: Mapping[str, int] | None = None, calls: int = 0, busy: float = 0.0) -> None:
        """Record the outcome of some of the project's pending ids, why they failed (message -> tasks), and the
        calls and seconds it took."""

    def due(self, now: float) -> list[int]:
        """Projects with pending ids whose next try has come and that nobody holds, oldest job first."""

    def hold(self, project: int, owner: str, seconds: float) -> bool:
        """Take (or renew) the project's lease for `seconds`; False when another live owner has it."""

    def let_go(self, project: int, owner: str) -> None: ...

    def holders(self) -> dict[int, str]:
        """The owners of the live leases of projects with an open job."""

    def wait(self, project: int, next_try: float, note: str, until: float | None = None) -> None:
        """The open job pauses until `next_try` (`until`: when the quota resets), saying why in `note`."""

    def close_if_done(self, project: int) -> bool:
        """Finish the project's open job when nothing is pending; True when it did (or none was open)."""

    def jobs(self, limit: int = SHOWN_JOBS) -> list[ImportJob]:
        """Open jobs first (oldest first), then the newest finished ones."""

    def remember(self, project: int, extra_params: str) -> None:
        """Keep the extra params (JSON) of the project's last `/setup`: its opt-in, and what its predictions use."""

    def extra_params(self, project: int) -> str | None: ...


def now() -> float:
    return time.time()
