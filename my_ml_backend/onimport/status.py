"""The import jobs as the status page shows them: one row per job, plain values (the page formats them)."""

from __future__ import annotations

from dataclasses import dataclass

from .queue import ImportQueue, now

REASONS_SHOWN = 3


@dataclass(frozen=True)
class ImportRow:
    """One import job: project, progress, failures with their reasons, calls, ETA and any wait."""

    project: int
    state: str  # "running" | "waiting" | "finished"
    done: int  # posted + skipped (already predicted, or deleted)
    total: int
    failed: int
    reasons: tuple[tuple[str, int], ...]  # the most frequent failure reasons, with their task counts
    calls: int
    eta_seconds: float | None  # work left at the pace so far; None before the first chunk, or when finished
    waiting_until: float | None  # Unix time the quota comes back (state "waiting")
    note: str  # why it waits, in words (bilingual)
    started: float
    finished: float | None


def import_rows(queue: ImportQueue, at: float | None = None) -> list[ImportRow]:
    """The rows of the recent import jobs, open ones first."""
    stamp = now() if at is None else at
    rows = []
    for job in queue.jobs():
        if job.finished is not None:
            state = "finished"
        elif job.note or job.next_try > stamp:
            state = "waiting"
        else:
            state = "running"
        rows.append(ImportRow(
            project=job.project, state=state, done=job.posted + job.skipped, total=job.total, failed=job.failed,
            reasons=tuple(job.errors.most_common(REASONS_SHOWN)), calls=job.calls,
            eta_seconds=None if job.finished is not None else job.eta(), waiting_until=job.waiting_until,
            note=job.note, started=job.started, finished=job.finished,
        ))
    return rows
