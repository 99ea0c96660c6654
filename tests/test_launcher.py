"""`label-studio-ml start ./my_ml_backend` as users run it: the real CLI, the real `sh -c python` child.

label-studio-ml 1.0.9 runs `os.system('python …/_wsgi.py')`: the `python` first on PATH, its exit
status thrown away. These tests put a Python without any package first on PATH (a user who
did not activate the venv) and stop the CLI with SIGTERM (a process manager, `kill`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

CLI = Path(sys.executable).parent / "label-studio-ml"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def project_copy(tmp_path: Path, with_venv: bool) -> Path:
    """The backend in a fresh checkout, with or without the project's `.venv` next to it."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "my_ml_backend", root / "my_ml_backend", ignore=shutil.ignore_patterns("data", "logs"))
    if with_venv:
        (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return root


def env_with(bin_dir: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE_", "LLM_", "VIRTUAL_ENV"))}
    env.update({"PATH": f"{bin_dir}:{env['PATH']}", "DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path)})
    return env


def health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_without_the_venv_it_exits_non_zero_with_a_hint(bare_python: Path, tmp_path: Path) -> None:
    root = project_copy(tmp_path, with_venv=False)
    proc = subprocess.run(
        [str(CLI), "start", str(root / "my_ml_backend"), "--port", str(free_port())],
        env=env_with(bare_python, tmp_path), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output and "ModuleNotFoundError" not in output
    assert "label_studio_ml" in output and "source .venv/bin/activate" in output and "scripts/start.sh" in output


def test_with_a_venv_it_starts_and_sigterm_leaves_nothing_serving(bare_python: Path, tmp_path: Path) -> None:
    root = project_copy(tmp_path, with_venv=True)
    port = free_port()
    log = (tmp_path / "out.log").open("wb")
    cli = subprocess.Popen(
        [str(CLI), "start", str(root / "my_ml_backend"), "--port", str(port), "--host", "127.0.0.1"],
        env=env_with(bare_python, tmp_path), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not health(port):
            assert cli.poll() is None and time.monotonic() < deadline, (tmp_path / "out.log").read_text()
            time.sleep(0.2)
        cli.send_signal(signal.SIGTERM)  # only the CLI: its `sh` and server child must follow by themselves
        cli.wait(timeout=10)
        deadline = time.monotonic() + 10
        while health(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not health(port), "the server still answers after label-studio-ml was stopped"
        text = (tmp_path / "out.log").read_text(encoding="utf-8")
        assert "改用" in text and ".venv" in text and "label-studio-ml exited" in text
    finally:
        with_group = cli.pid
        try:
            os.killpg(with_group, signal.SIGKILL)  # our own session only, in case the assertion failed
        except ProcessLookupError:
            pass
        log.close()
