"""Fixtures for the real-model tests: a real small LLM served by llama.cpp, our backend in front.

One llama.cpp server and one backend per session: the server loads the model once (about 1 s)
and answers one request at a time, so the tests share it and stay within a couple of minutes.
The first run on a machine installs llama-cpp-python and the model (``scripts/local_model.sh
install``, about 7 minutes, shown live); later runs find the cache and start in about a second.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.real_model.local_model import LocalModelServer, LocalModelUnavailable, install

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
        if capture is not None:  # a cold install compiles for minutes: show it live, even without -s
            with capture.global_and_fixture_disabled():
                print(
                    "\n[real-model] scripts/local_model.sh install: llama-cpp-python 0.3.36 + "
                    "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (first run builds llama.cpp, ~7 min on 2 cores)",
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


@dataclass
class RealBackend:
    """Our backend pointed at the llama.cpp server, and what its first call cost."""

    backend: Backend
    server: LocalModelServer
    warmup_statuses: Counter[int]
    warmup_prediction: dict

    def chat_requests(self) -> Counter[int]:
        return self.server.chat_requests()


@pytest.fixture(scope="session")
def real_backend(llama_server: LocalModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealBackend]:
    """A backend process (as users start it) talking to the real model.

    Greedy decoding (temperature 0) keeps runs repeatable; no retries, so every request the
    server logs is one the backend meant to send; one request at a time, as the server
    serves. One warm-up task teaches the backend the endpoint's output mode (see the test
    module's docstring) before the tests count calls.
    """
    env = {
        "MODELSCOPE_API_KEY": "sk-local-llama-cpp",  # the server ignores it; the backend needs one
        "MODELSCOPE_API_URL": llama_server.base_url,
        "MODELSCOPE_MODEL": llama_server.model,
        "LLM_CONCURRENCY": "1",
        "LLM_TEMPERATURE": "0",
        "LLM_MAX_RETRIES": "0",
        "LLM_TIMEOUT": "120",
        "ML_TIMEOUT_PREDICT": "600",  # the 0.5B model on 2 cores: never cut a test's batch short
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "DEBUG": "true",
    }
    backend = Backend(env, tmp_path_factory.mktemp("real_backend"))
    try:
        before = llama_server.chat_requests()
        backend.setup(WARMUP_CONFIG)
        started = time.monotonic()
        [prediction] = backend.predict(WARMUP_CONFIG, [{"id": 1, "data": {"text": "物流很快，包装完好，很满意。"}}])
        statuses = llama_server.chat_requests() - before
        report(f"warm-up task (learns the output mode): {time.monotonic() - started:.1f} s, requests {dict(statuses)}")
        yield RealBackend(backend, llama_server, statuses, prediction)
    finally:
        backend.stop()
