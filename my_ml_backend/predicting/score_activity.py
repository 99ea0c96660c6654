"""What the review score cost and withheld in this process, for the status page (`/metrics` counts it too).

Extra score calls by method and model, the one-line reason scoring is degraded now (if it is), and the tasks
per project whose score was under the minimum and so got an empty pre-label.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from ..telemetry.metrics import METRICS

SCORE_CALLS = "score_calls"  # labelled counters of telemetry.metrics
SCORE_WITHHELD = "score_withheld"


@dataclass
class ScoreSnapshot:
    calls: dict[tuple[str, str], int] = field(default_factory=dict)  # (method, model) -> calls
    withheld: dict[str, int] = field(default_factory=dict)  # project -> tasks
    degraded: str = ""


class ScoreActivity:
    """Thread-safe per-process record of the score's extra calls, its degradation and withheld tasks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str]] = Counter()
        self._withheld: Counter[str] = Counter()
        self._degraded = ""

    def called(self, method: str, model: str) -> None:
        METRICS.inc(SCORE_CALLS, method=method, model=model)
        with self._lock:
            self._calls[(method, model)] += 1

    def withheld(self, project: str) -> None:
        METRICS.inc(SCORE_WITHHELD, project=project or "-")
        with self._lock:
            self._withheld[project or "-"] += 1

    def degrade(self, reason: str) -> bool:
        """Note that scoring is degraded; True the first time for this reason (the caller logs it once)."""
        with self._lock:
            if self._degraded == reason:
                return False
            self._degraded = reason
            return True

    def restore(self) -> None:
        with self._lock:
            self._degraded = ""

    def snapshot(self) -> ScoreSnapshot:
        with self._lock:
            return ScoreSnapshot(dict(self._calls), dict(self._withheld), self._degraded)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()
            self._withheld.clear()
            self._degraded = ""


SCORE_ACTIVITY = ScoreActivity()
