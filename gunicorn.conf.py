"""gunicorn hooks for the backend: one `/metrics` scrape covers every worker of a replica.

gunicorn loads this file from the working directory (`scripts/start.sh` and the Docker
image pass it with `-c`). It gives the workers a `PROMETHEUS_MULTIPROC_DIR` before they
start, so `prometheus_client` keeps each worker's counters in files there and adds them
up at scrape time (`telemetry.metrics`). Set the variable yourself to choose the folder;
by default a fresh temporary one is made. Either way it is emptied when gunicorn starts,
so a restart never adds the last run's counts, and a worker that exits is marked dead
(its counters stay in the sums, its live-only gauges go).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # set once in the master; inherited by every worker
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ml-backend-metrics-")
    os.environ["ML_BACKEND_OWN_METRICS_DIR"] = "1"


def on_starting(server: Any) -> None:
    """Before the first worker: an empty folder, whatever an earlier run left in it."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def child_exit(server: Any, worker: Any) -> None:
    # Imported here, not above: prometheus_client picks its value store when first
    # imported, and the workers forked from this master must pick the files.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if os.environ.get("ML_BACKEND_OWN_METRICS_DIR"):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
