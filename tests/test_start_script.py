"""`bash scripts/start.sh` as a new user runs it: says what it does, starts gunicorn, explains a busy port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, free_port


def start_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE_", "LLM_"))}
    env.update({"PORT": str(port), "WORKERS": "1", "THREADS": "2", "GUNICORN_TIMEOUT": "30"})
    env.update({"DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs")})
    return env


def test_busy_port_gets_a_bilingual_hint_naming_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            ["bash", "scripts/start.sh"], cwd=ROOT, env=start_env(tmp_path, port),
            capture_output=True, text=True, timeout=300,
        )
    assert "正在安装依赖 (installing dependencies)" in proc.stdout
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"端口 {port} 已被占用" in proc.stderr and f"port {port} is in use" in proc.stderr
    assert f"PORT={port + 1} bash scripts/start.sh" in proc.stderr
    assert "Connection in use" not in proc.stdout + proc.stderr


def test_starts_gunicorn_on_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    out = (tmp_path / "start.log").open("wb")
    proc = subprocess.Popen(
        ["bash", "scripts/start.sh"], cwd=ROOT, env=start_env(tmp_path, port),
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "start.log").read_text()
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # gunicorn (exec'd by the script) stops its workers
        assert proc.wait(timeout=30) == 0
        log = (tmp_path / "start.log").read_text(encoding="utf-8")
        assert "正在安装依赖" in log and f"0.0.0.0:{port}" in log and "threads=2" in log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out.close()
