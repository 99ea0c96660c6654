"""Fixtures for the real-model tests: a real small LLM served by llama.cpp, our backend in front.

One llama.cpp server and one backend per session: the server loads the model once (about 1 s)
and answers one request at a time, so the tests share it and stay within a couple of minutes.
The first run on a machine installs llama-cpp-python and the model (``scripts/local_model.sh
install``, 5-8 minutes, shown live); later runs find the cache and start in about a second.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.real_model.local_model import LOOPBACK, LocalModelServer, LocalModelUnavailable, install, installed

FIGURES: list[str] = []
"""Timings and per-control counts reported by the tests, repeated in the terminal summary."""
VALID_COUNTS: dict[str, Counter[str]] = defaultdict(Counter)
"""Per control tag: tasks asked, tasks with a valid region, regions (filled by the tests)."""

WARMUP_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="正面"/>
    <Choice value="负面"/>
  </Choices>
</View>"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "real_model: runs a real LLM (Qwen2.5-Coder-0.5B via llama.cpp) behind the backend "
        "(deselect with -m 'not real_model')",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/real_model is marked here, so no test can forget it."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.real_model)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures even without -s, so CI logs show what the real model cost."""
    if FIGURES or VALID_COUNTS:
        terminalreporter.section("real local model figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
        for tag, counts in sorted(VALID_COUNTS.items()):
            terminalreporter.write_line(
                f"valid results for {tag}: {counts['valid']}/{counts['tasks']} tasks, {counts['regions']} regions"
            )


def report(line: str) -> None:
    """Print a figure now (visible with -s) and keep it for the terminal summary."""
    print(f"[real-model] {line}")
    FIGURES.append(line)


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def local_model_install(request: pytest.FixtureRequest) -> dict[str, str]:
    """The local model's cache, installed on first use (paths from `scripts/local_model.sh install`).

    Where it cannot be installed (no network, no compiler) the tests are skipped with the
    installer's message; on CI (CI=true) they fail instead, so that a broken install can
    never pass as "skipped". Same policy as the Label Studio end-to-end tests.
    """
    capture = request.config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()
    try:
        if capture is not None and not installed():  # a cold install compiles for minutes: show it live
            with capture.global_and_fixture_disabled():
                print(
                    "\n[real-model] scripts/local_model.sh install: llama-cpp-python 0.3.36 + "
                    "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (first run builds llama.cpp, 5-8 min on 2 cores)",
                    flush=True,
                )
                paths = install(show_progress=True)
        else:
            paths = install()
    except LocalModelUnavailable as exc:
        message = f"the local real model is not available: {exc}"
        if on_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    report(f"local model install/cache check: {time.monotonic() - started:.1f} s ({paths.get('cache')})")
    return paths


@pytest.fixture(scope="session")
def llama_server(local_model_install: dict[str, str]) -> Iterator[LocalModelServer]:
    """`python -m llama_cpp.server` with the model, on a free loopback port."""
    server = LocalModelServer(n_threads=2, n_ctx=4096)
    server.start()
    report(f"llama_cpp.server started in {server.startup_seconds:.1f} s on {server.base_url} (model {server.model})")
    yield server
    server.stop()


# Seconds a /predict may take here. Not Label Studio's 100 s: on a busy machine (another model
# sharing the 2 cores) the 0.5B model gets 10x slower, and these tests check validity, not speed.
PREDICT_TIMEOUT = 1200


@dataclass
class RealBackend:
    """Our backend pointed at the llama.cpp server, and what its first call cost."""

    backend: Backend
    server: LocalModelServer
    warmup_statuses: Counter[int] = field(default_factory=Counter)
    warmup_prediction: dict = field(default_factory=dict)
    warmup_content_free: int = 0

    def chat_requests(self) -> Counter[int]:
        return self.server.chat_requests()

    def log_mark(self) -> int:
        return self.backend.stdout.stat().st_size

    def content_free_calls(self, since: int) -> int:
        """Calibration requests made since `since` (`log_mark`): "Task content-free-<lang>-<i>" in the debug log.

        A single-choice config asks its content-free texts once per prompt language, after the
        first batch whose replies carried token alternatives (labeling/calibration.py).
        """
        text = self.backend.stdout.read_bytes()[since:].decode("utf-8", "replace")
        return len(set(re.findall(r"Task (content-free-\w+-\d+) fields", text)))

    def extension_calls(self, since: int) -> int:
        """Second requests for a list closed in doubt (labeling/extension.py) since `since`, from the debug log."""
        text = self.backend.stdout.read_bytes()[since:].decode("utf-8", "replace")
        return len(re.findall(r"Task \S+: lists closed in doubt asked to go on", text))

    def predict(self, label_config: str, tasks: list[dict]) -> list[dict]:
        """What Label Studio sends for "Retrieve predictions", waiting as long as the model needs."""
        payload = {
            "tasks": tasks,
            "project": "1.1700000000",
            "label_config": label_config,
            "params": {"login": None, "password": None, "context": None},
        }
        request = urllib.request.Request(
            f"{self.backend.url}/predict",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with LOOPBACK.open(request, timeout=PREDICT_TIMEOUT) as resp:
            results = json.load(resp)["results"]
        assert len(results) == len(tasks), results
        return results


@pytest.fixture(scope="session")
def real_backend(llama_server: LocalModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealBackend]:
    """A backend process (as users start it) talking to the real model.

    Greedy decoding (temperature 0) keeps runs repeatable; one request at a time, as the
    server serves. Retries keep their default (2): the warm-up shows that the refused
    json_schema request is not repeated, and any retry later would show up in the tests'
    request counts. The warm-up task teaches the backend the endpoint's output mode (see
    the test module's docstring) before the tests count calls.
    """
    env = {
        "MODELSCOPE_API_KEY": "sk-local-llama-cpp",  # the server ignores it; the backend needs one
        "MODELSCOPE_API_URL": llama_server.base_url,
        "MODELSCOPE_MODEL": llama_server.model,
        "LLM_CONCURRENCY": "1",
        "LLM_TEMPERATURE": "0",
        "LLM_MAX_RETRIES": "2",
        # Never cut a request or a batch short (a timed-out request would be retried and counted).
        "LLM_TIMEOUT": str(PREDICT_TIMEOUT),
        "ML_TIMEOUT_PREDICT": str(PREDICT_TIMEOUT + 10),
        "LLM_CACHE": "off",  # every task must reach the model: these tests count its requests
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "DEBUG": "true",
    }
    backend = Backend(env, tmp_path_factory.mktemp("real_backend"))
    try:
        real = RealBackend(backend, llama_server)
        before, mark = llama_server.chat_requests(), real.log_mark()
        backend.setup(WARMUP_CONFIG)
        started = time.monotonic()
        warmup_task = {"id": 1, "data": {"text": "物流很快，包装完好，很满意。"}}
        [real.warmup_prediction] = real.predict(WARMUP_CONFIG, [warmup_task])
        real.warmup_statuses = llama_server.chat_requests() - before
        real.warmup_content_free = real.content_free_calls(mark)
        report(
            f"warm-up task (learns the output mode): {time.monotonic() - started:.1f} s, "
            f"requests {dict(real.warmup_statuses)}"
        )
        yield real
    finally:
        backend.stop()
