"""Fixtures for the end-to-end tests: one Label Studio per session, backends per test.

Label Studio is started once (about 5 s with a warm cache) and every test creates its
own projects in it, so tests stay independent without paying the start-up each time.
Backends are cheap and carry the setting under test (model, auth), so each test starts
the ones it needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest

import tests.conftest as shared
from tests.conftest import TEST_KEY, Backend
from tests.e2e.label_studio import (
    Installation,
    LabelStudioClient,
    LabelStudioServer,
    LabelStudioUnavailable,
    install,
)
from tests.fake_llm.server import FakeLLMServer

FIGURES: list[str] = []
"""Timings and counts reported by the tests, repeated in the terminal summary."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: drives a real Label Studio 1.23.2 against the backend (deselect with -m 'not e2e')"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is end-to-end, marked here so no test can forget it."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures even without -s, so CI logs show how long Label Studio took."""
    if FIGURES:
        terminalreporter.section("Label Studio e2e figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def report(line: str) -> None:
    """Print a figure now (visible with -s) and keep it for the terminal summary."""
    print(f"[e2e] {line}")
    FIGURES.append(line)


@pytest.fixture(scope="session")
def ls_installation(request: pytest.FixtureRequest) -> Installation:
    """Label Studio from the cache, installed on first use.

    Without network the tests are skipped with the installer's own message; on CI
    (CI=true) they fail instead, so a broken install can never pass as "skipped".
    """
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # a cold install is silent for minutes: say why, even without -s
        with capture.global_and_fixture_disabled():
            print("\n[e2e] scripts/label_studio_env.sh: Label Studio 1.23.2 (first run installs it, ~3 min)")
    started = time.monotonic()
    try:
        installation = install()
        report(f"Label Studio install/cache check: {time.monotonic() - started:.1f} s")
        return installation
    except LabelStudioUnavailable as exc:
        message = f"Label Studio 1.23.2 is not available: {exc}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def label_studio(
    ls_installation: Installation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabelStudioServer]:
    server = LabelStudioServer(ls_installation, tmp_path_factory.mktemp("label_studio"))
    report(f"Label Studio {ls_installation.version} started in {server.startup_seconds:.1f} s on {server.url}")
    yield server
    server.stop()


@pytest.fixture()
def ls(label_studio: LabelStudioServer) -> LabelStudioClient:
    """The API client of the session's Label Studio."""
    return label_studio.client


StartBackend = Callable[..., Backend]


@pytest.fixture()
def start_backend(llm: FakeLLMServer, tmp_path: Path) -> Iterator[StartBackend]:
    """Start backends talking to the fake LLM; all are stopped after the test.

    `port=` restarts a backend where the previous one listened, as a user restarting
    it would (Label Studio keeps the URL). Retries are few so failure tests stay fast.
    """
    started: list[Backend] = []

    def start(name: str = "backend", port: int | None = None, **env: str) -> Backend:
        full_env = {
            "MODELSCOPE_API_KEY": TEST_KEY,
            "MODELSCOPE_API_URL": llm.base_url,
            "LLM_MAX_RETRIES": "1",
            "LLM_TIMEOUT": "10",
            "PYTHONDONTWRITEBYTECODE": "1",  # nothing written into the source tree, not even .pyc
            **env,
        }
        workdir = tmp_path / f"{name}-{len(started)}"
        workdir.mkdir()
        if port is None:
            backend = Backend(full_env, workdir)
        else:
            with mock.patch.object(shared, "free_port", return_value=port):
                backend = Backend(full_env, workdir)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        if backend.proc.poll() is None:
            backend.stop()
