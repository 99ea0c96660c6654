"""The import jobs as the status page shows them (text cells), and the `/metrics` gauge of tasks still waiting."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from ..onimport.config import ImportConfig
from ..onimport.queue import ImportQueue
from ..onimport.status import ImportRow, import_rows
from ..telemetry.metrics import METRICS, Labels
from .status import ImportTable, ago, seconds

logger = logging.getLogger(__name__)

STATES = {"running": "进行中 (running)", "waiting": "等待 (waiting)", "finished": "完成 (finished)"}


def row_cells(row: ImportRow, now: float) -> list[object]:
    share = row.done / row.total if row.total else 1.0
    reasons = "; ".join(f"{message} × {count}" for message, count in row.reasons)
    state = STATES.get(row.state, row.state)
    if row.state == "waiting" and row.waiting_until:
        state = f"等待额度至 (waiting for quota until) {time.strftime('%H:%M', time.localtime(row.waiting_until))}"
    return [
        row.project,
        f"{row.done} / {row.total} ({share:.0%})",
        f"{row.failed}" + (f" ({reasons})" if reasons else ""),
        row.calls,
        seconds(row.eta_seconds) if row.eta_seconds is not None else "—",
        state + (f" — {row.note}" if row.note else ""),
        ago(row.finished or row.started, now),
    ]


def import_table(queue: ImportQueue, config: ImportConfig) -> Callable[[float], ImportTable]:
    """What the status page shows of predict-on-import at a given time: a note and one row per recent job."""

    def table(now: float) -> ImportTable:
        try:
            rows = import_rows(queue, now)
        except Exception:  # noqa: BLE001 - the page shows what it can
            logger.warning("读取导入任务失败 (cannot read the import jobs)", exc_info=True)
            rows = []
        note = config.missing_line if config.for_all or rows else ""
        return note, [row_cells(r, now) for r in rows]

    return table


def install_backlog_gauge(queue: ImportQueue) -> None:
    """`ml_backend_import_tasks_left`: imported tasks of open jobs still waiting for their prediction."""

    def backlog() -> Iterable[tuple[Labels, float]]:
        yield (), float(sum(job.left for job in queue.jobs() if job.finished is None))

    METRICS.gauge("import_tasks_left", "Imported tasks still waiting for a prediction (open import jobs).", backlog)
