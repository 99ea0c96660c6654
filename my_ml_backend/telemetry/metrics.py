"""Counters of what predictions cost, for `/metrics` (Prometheus text format) and the batch log line.

Two questions matter when the endpoint is a metered free tier: how many requests did
we really send (retries included) and how many did the cache save. So what every chat
call does is counted twice (`llm.observers`): in the process-wide `METRICS` (served at
`/metrics`) and, optionally, in the `Tally` of the batch it belongs to (logged when the
batch ends).

`METRICS` is backed by `prometheus_client`. Under gunicorn, `gunicorn.conf.py` sets
`PROMETHEUS_MULTIPROC_DIR` before the workers start: each worker then writes its
counters to files there and any worker answering a scrape adds up all of them
(`prometheus_client.multiprocess`), so one scrape covers the whole replica.
Without it (`python _wsgi.py`, a batch job) the counters are this process's.
Gauges read at scrape time (`gauge()`) are always the answering process's view.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

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
    "model_answers": "Chat answers received, by the pool model that answered (llm.pool).",
    "model_refusals": "Refusals that took a pool model out for the quota day, by model and reason.",
    "score_calls": "Extra calls made for the review score (LLM_SCORE), by method and by the model that answered.",
    "score_withheld": "Tasks left without a pre-label because their score was under LLM_MIN_SCORE, by project.",
    "import_tasks_queued": "Imported tasks queued for prediction by the TASKS_CREATED webhook (onimport).",
    "import_predictions_posted": "Predictions of imported tasks posted to Label Studio.",
    "import_tasks_skipped": "Imported tasks skipped: already predicted with this model_version, or deleted.",
    "import_tasks_failed": "Imported tasks whose prediction failed for the task's own reason.",
    "import_quota_waits": "Times an import job paused because the day's quota was used up.",
}

Labels = tuple[tuple[str, str], ...]
_LABELS: dict[str, tuple[str, ...]] = {  # label names of the labelled counters (sorted)
    ERRORS: ("kind",),
    "model_answers": ("model",),
    "model_refusals": ("model", "reason"),
    "score_calls": ("method", "model"),
    "score_withheld": ("project",),
}


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


class Metrics:
    """The process-wide counters (`prometheus_client` counters) plus gauges read at scrape time.

    Same interface as `Tally` for counting (`inc`, `get`: this process's own values),
    and `render()` for `/metrics`: the whole replica in multiprocess mode.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.started = time.time()
        self.multiprocess_dir = multiprocess_dir
        self._counters: dict[str, prometheus_client.Counter] = {}
        self._lock = threading.Lock()
        self._gauges: dict[str, tuple[str, Callable[[], Iterable[tuple[Labels, float]]]]] = {}
        for name in _HELP:
            self._counter(name, _LABELS.get(name, ()))
        info = f"{PREFIX}process_info"
        if multiprocess_dir:  # `liveall`: one sample per live worker, labelled with its pid
            Gauge(info, "Worker processes counted (pid label).", registry=self.registry,
                  multiprocess_mode="liveall").set(1)
        else:
            Gauge(info, "The process these numbers belong to.", ["pid"], registry=self.registry).labels(
                str(os.getpid())
            ).set(1)
        Gauge(f"{PREFIX}process_start_time_seconds", "Start of counting, Unix time (the earliest worker).",
              registry=self.registry, multiprocess_mode="min").set(self.started)
        self.registry.register(_ScrapeGauges(self._gauges))

    def _counter(self, name: str, labelnames: tuple[str, ...]) -> prometheus_client.Counter:
        with self._lock:
            counter = self._counters.get(name)
            if counter is None:  # a name nobody declared in _HELP: created on first use
                counter = prometheus_client.Counter(
                    PREFIX + name, _HELP.get(name, name), labelnames, registry=self.registry
                )
                self._counters[name] = counter
            return counter

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        if not value:
            return
        counter = self._counter(name, tuple(sorted(labels)))
        (counter.labels(**labels) if labels else counter).inc(value)

    def get(self, name: str, **labels: str) -> float:
        """This process's count; without labels, the sum over all label values of `name`."""
        counter = self._counters.get(name)
        if counter is None:
            return 0.0
        return sum(
            sample.value
            for metric in counter.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """This process's counts of `name` per value of `label` (summed over its other labels)."""
        counter = self._counters.get(name)
        out: dict[str, float] = {}
        for metric in counter.collect() if counter is not None else ():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    key = sample.labels.get(label, "")
                    out[key] = out.get(key, 0.0) + sample.value
        return out

    def gauge(self, name: str, help_text: str, read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        """Register a gauge whose samples are read when `/metrics` is scraped."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4: every worker's counters in multiprocess mode."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry).decode("utf-8")
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(_ScrapeGauges(self._gauges))
        return generate_latest(registry).decode("utf-8")


class _ScrapeGauges:
    """A collector that reads the registered gauges (e.g. the AIMD limit) at scrape time."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], Iterable[tuple[Labels, float]]]]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Any]:
        for name, (help_text, read) in sorted(self._gauges.items()):
            samples = list(read())
            labelnames = [k for k, _ in samples[0][0]] if samples else []
            family = GaugeMetricFamily(f"{PREFIX}{name}", help_text, labels=labelnames)
            for labels, value in samples:
                family.add_metric([v for _, v in labels], value)
            yield family


prometheus_client.disable_created_metrics()  # no `_created` series: one sample per counter and label set

METRICS = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)
"""What this process (or, under gunicorn, every worker of this replica) has spent; served at `/metrics`."""

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
