"""Shared fixtures: the local OpenAI-compatible server and a real backend process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.fake_llm.server import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "examples" / "configs"
TEST_KEY = "ms-0a1b2c3d-4e5f-4a6b-8c7d-0123456789ab"  # a fake token of ModelScope's shape


def config(name: str) -> str:
    return (CONFIGS / f"{name}.xml").read_text(encoding="utf-8")


def example_tasks() -> dict[str, dict]:
    return json.loads((ROOT / "examples" / "tasks.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def llm_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture()
def llm(llm_server: FakeLLMServer) -> Iterator[FakeLLMServer]:
    """The fake LLM, reset before and after each test."""
    llm_server.reset()
    llm_server.latency = 0
    yield llm_server
    llm_server.reset()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """Our backend started as Label Studio users start it (`python my_ml_backend/_wsgi.py`)."""

    def __init__(self, env: dict[str, str], tmp: Path, gunicorn: list[str] | None = None) -> None:
        """`gunicorn`: serve with gunicorn and these extra options (e.g. `--workers 2 --threads 8`)."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = tmp / "logs"
        self.stdout = tmp / "stdout.log"
        self.env, self.data_dir = dict(env), tmp / "data"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE_", "LLM_"))}
        full_env.update({"LOG_DIR": str(self.log_dir), "DATA_DIR": str(tmp / "data"), "PYTHONUNBUFFERED": "1"})
        full_env.update(env)
        self._out = open(self.stdout, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, str(ROOT / "my_ml_backend" / "_wsgi.py")]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        if gunicorn is not None:
            command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--pythonpath", str(ROOT)]
            command += [*gunicorn, "my_ml_backend._wsgi:app"]
        self.proc = subprocess.Popen(
            command,
            env=full_env,
            cwd=str(tmp),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited: {self.stdout.read_text(errors='replace')}")
            try:
                self.request("GET", "/health")  # any HTTP answer (401 with basic auth) means it is up
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("backend did not start")

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            text = err.read()
            try:
                return err.code, json.loads(text)
            except ValueError:
                return err.code, {"raw": text.decode(errors="replace")}

    def get(self, path: str) -> dict:
        status, body = self.request("GET", path)
        assert status == 200, body
        return body

    def post(self, path: str, body: object) -> tuple[int, dict]:
        return self.request("POST", path, body)

    def setup(self, label_config: str, project: str = "1.1700000000") -> str:
        status, body = self.post("/setup", {"project": project, "schema": label_config, "extra_params": None})
        assert status == 200, body
        return body["model_version"]

    def predict(self, label_config: str, tasks: list[dict], project: str = "1.1700000000") -> list[dict]:
        """What Label Studio sends for "Retrieve predictions"; checks the reply's shape."""
        payload = {
            "tasks": tasks,
            "project": project,
            "label_config": label_config,
            "params": {"login": None, "password": None, "context": None},
        }
        status, body = self.post("/predict", payload)
        assert status == 200, body
        assert len(body["results"]) == len(tasks)
        return body["results"]

    def forget_quota(self) -> None:
        """Clear the quota ledger the backend keeps in its DATA_DIR (what a new quota day does)."""
        from my_ml_backend.llm.quota import open_ledger
        from my_ml_backend.settings import load_settings

        open_ledger(load_settings({**self.env, "DATA_DIR": str(self.data_dir)})).clear()

    def logs(self) -> str:
        text = self.stdout.read_text(encoding="utf-8", errors="replace")
        log_file = self.log_dir / "ml_backend.log"
        if log_file.exists():
            text += log_file.read_text(encoding="utf-8", errors="replace")
        return text

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._out.close()


@pytest.fixture(scope="session")
def backend(llm_server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A backend with a key, talking to the fake LLM (few retries, short timeout)."""
    env = {
        "MODELSCOPE_API_KEY": TEST_KEY,
        "MODELSCOPE_API_URL": llm_server.base_url + "/chat/completions",
        "LLM_TIMEOUT": "1",
        "LLM_MAX_RETRIES": "2",
        "DEBUG": "true",
        "LLM_CACHE": "off",  # its tests script one reply per request, often for the same task text
    }
    b = Backend(env, tmp_path_factory.mktemp("backend"))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def keyless_backend(llm_server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    b = Backend({"MODELSCOPE_API_URL": llm_server.base_url}, tmp_path_factory.mktemp("keyless"))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free 127.0.0.1 port (skipped locally without the binary, fails on CI)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (scripts/run_tests.sh installs it under CI=true as root)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def redis_db(redis_url: str) -> Iterator[str]:
    redis.Redis.from_url(redis_url).flushdb()
    yield redis_url


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a venv without any package: `python` for a user who did not activate the project's venv."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv / "bin"
