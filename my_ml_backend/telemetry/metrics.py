"""Counters of what predictions cost, for `/metrics` (Prometheus text format) and the batch log line.

Two questions matter when the endpoint is a metered free tier: how many requests did
we really send (retries included) and how many did the cache save. So every chat
call reports to two tallies: the process-wide `METRICS` (served at `/metrics`) and,
optionally, the tally of the batch it belongs to (logged when the batch ends).

Counters are per process. Under gunicorn with several workers each worker has its
own, and a scrape sees the worker that happened to answer it (the `pid` label of
`ml_backend_process_info` says which); see README.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

# Counter names (without the `ml_backend_` prefix and `_total` suffix).
CACHE_HITS = "cache_hits"
CACHE_MISSES = "cache_misses"
CACHE_ERRORS = "cache_errors"
API_REQUESTS = "api_requests"
API_RETRIES = "api_retries"
API_THROTTLED = "api_throttled"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
TASKS = "tasks"
BATCHES = "batches"
ERRORS = "errors"
CONCURRENCY_DECREASES = "concurrency_decreases"

PREFIX = "ml_backend_"

_HELP: dict[str, str] = {
    CACHE_HITS: "Chat calls answered from the response cache (no API request).",
    CACHE_MISSES: "Chat calls not found in the response cache.",
    CACHE_ERRORS: "Failed reads or writes of the cache store (treated as misses).",
    API_REQUESTS: "HTTP requests sent to the LLM endpoint, retries included.",
    API_RETRIES: "Requests that repeated a failed one (429, 5xx, timeout, connection error).",
    API_THROTTLED: "429 rate-limit answers received (an exhausted quota not included).",
    PROMPT_TOKENS: "Prompt tokens of answers paid for (cache hits cost none).",
    COMPLETION_TOKENS: "Completion tokens of answers paid for (cache hits cost none).",
    TASKS: "Tasks received in /predict batches.",
    BATCHES: "Prediction batches handled.",
    ERRORS: "Tasks that got no prediction, by error kind.",
    CONCURRENCY_DECREASES: "Times repeated 429 answers made the client lower its concurrency.",
    "fewshot_evaluations": "Automatic few-shot evaluations run (FEWSHOT_EXAMPLES=auto).",
    "fewshot_eval_calls": "LLM requests spent by automatic few-shot evaluations (within FEWSHOT_EVAL_CALLS).",
}

Labels = tuple[tuple[str, str], ...]


class Tally:
    """Thread-safe counters, optionally labelled (`errors{kind="timeout"}`)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, Labels]] = Counter()
        self._lock = threading.Lock()

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        if not value:
            return
        with self._lock:
            self._counts[(name, tuple(sorted(labels.items())))] += value

    def get(self, name: str, **labels: str) -> float:
        """One counter; without labels, the sum over all label values of `name`."""
        with self._lock:
            if labels:
                return self._counts[(name, tuple(sorted(labels.items())))]
            return sum(v for (n, _), v in self._counts.items() if n == name)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        with self._lock:
            return {dict(lbl).get(label, ""): v for (n, lbl), v in self._counts.items() if n == name}

    def items(self) -> list[tuple[str, Labels, float]]:
        with self._lock:
            return [(n, lbl, v) for (n, lbl), v in self._counts.items()]


class Metrics(Tally):
    """The process-wide tally plus gauges read at scrape time, rendered as Prometheus text."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.time()
        self._gauges: dict[str, tuple[str, Callable[[], Iterable[tuple[Labels, float]]]]] = {}

    def gauge(self, name: str, help_text: str, read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        """Register a gauge whose samples are read when `/metrics` is scraped."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines = [
            f"# HELP {PREFIX}process_info The worker process these numbers belong to (counters are per process).",
            f"# TYPE {PREFIX}process_info gauge",
            f'{PREFIX}process_info{{pid="{os.getpid()}"}} 1',
            f"# HELP {PREFIX}process_start_time_seconds Start of counting, Unix time.",
            f"# TYPE {PREFIX}process_start_time_seconds gauge",
            f"{PREFIX}process_start_time_seconds {self.started:.3f}",
        ]
        samples: dict[str, list[tuple[Labels, float]]] = {name: [] for name in _HELP}
        for name, labels, value in self.items():
            samples.setdefault(name, []).append((labels, value))
        for name, values in samples.items():
            metric = f"{PREFIX}{name}_total"
            lines += [f"# HELP {metric} {_HELP.get(name, name)}", f"# TYPE {metric} counter"]
            if not values and name != ERRORS:  # a labelled family with no sample yet stays empty
                values = [((), 0)]
            lines += [f"{metric}{_labels(labels)} {_number(value)}" for labels, value in sorted(values)]
        for name, (help_text, read) in sorted(self._gauges.items()):
            metric = f"{PREFIX}{name}"
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            lines += [f"{metric}{_labels(labels)} {_number(value)}" for labels, value in read()]
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


METRICS = Metrics()
"""What this process has spent since it started; served at `/metrics`."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
