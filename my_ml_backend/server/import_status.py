"""The status page's section on import jobs, and the `/metrics` gauge of tasks still waiting."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from ..onimport.config import ImportConfig
from ..onimport.queue import ImportQueue
from ..onimport.status import ImportRow, import_rows
from ..telemetry.metrics import METRICS, Labels
from . import status

logger = logging.getLogger(__name__)

STATES = {"running": "进行中 (running)", "waiting": "等待 (waiting)", "finished": "完成 (finished)"}


def row_cells(row: ImportRow, now: float) -> list[str]:
    esc = status.esc
    share = row.done / row.total if row.total else 1.0
    reasons = "; ".join(f"{message} × {count}" for message, count in row.reasons)
    if row.state == "waiting" and row.waiting_until:
        state = f"等待额度至 (waiting for quota until) {time.strftime('%H:%M', time.localtime(row.waiting_until))}"
    else:
        state = STATES.get(row.state, row.state)
    eta = status.seconds(row.eta_seconds) if row.eta_seconds is not None else "—"
    return [
        esc(row.project),
        f'<span class="done">{row.done}</span> / <span class="total">{row.total}</span> '
        f'<progress max="{row.total}" value="{row.done}"></progress> {share:.0%}',
        esc(f"{row.failed}" + (f" ({reasons})" if reasons else "")),
        esc(row.calls),
        esc(eta),
        esc(state) + (f'<br><span class="note">{esc(row.note)}</span>' if row.note else ""),
        esc(status.ago(row.finished or row.started, now)),
    ]


def install_import_section(queue: ImportQueue, config: ImportConfig) -> None:
    """Add the import jobs to the status page (after the running batches) and their backlog to `/metrics`."""

    def import_jobs_section(data: status.StatusData) -> str:
        try:
            rows = import_rows(queue, data.now)
        except Exception:  # noqa: BLE001 - the page shows what it can
            logger.warning("读取导入任务失败 (cannot read the import jobs)", exc_info=True)
            rows = []
        headers = ["项目 (project)", "完成 (done / total)", "失败 (failed)", "API 调用 (calls)", "预计剩余 (ETA)",
                   "状态 (state)", "开始/结束 (started/ended)"]
        note = f'<p class="note">{status.esc(config.missing_line)}</p>' if config.missing_line and (
            config.for_all or rows) else ""
        table = status.table(headers, [row_cells(r, data.now) for r in rows],
                             "还没有导入即预测的任务 (no predict-on-import job yet)")
        return f'<h2>导入即预测 (predict on import)</h2><div id="imports">{note}{table}</div>'

    def backlog() -> Iterable[tuple[Labels, float]]:
        yield (), float(sum(job.left for job in queue.jobs() if job.finished is None))

    status.SECTIONS[:] = [s for s in status.SECTIONS if s.__name__ != import_jobs_section.__name__]
    status.SECTIONS.insert(1, import_jobs_section)
    METRICS.gauge("import_tasks_left", "Imported tasks still waiting for a prediction (open import jobs).", backlog)
