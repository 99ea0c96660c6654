"""What `_wsgi.py` does when run as a script by `label-studio-ml start ./my_ml_backend`.

label-studio-ml 1.0.9's `start` runs `os.system('python …/_wsgi.py …')`, which has two
traps (found by running it):
- it starts whatever `python` comes first on PATH: without an activated venv that is
  the system Python, the import of `label_studio_ml` fails, and `os.system`'s status is
  thrown away, so the command prints a traceback and exits 0;
- the server runs as `label-studio-ml` → `sh -c python …` → `python _wsgi.py`; Ctrl-C
  reaches all three, but a SIGTERM to `label-studio-ml` (`kill`, a process manager, an
  IDE's stop button) ends only it, and `sh` and the server keep serving on the port.

So, with the standard library only (it runs before any dependency is importable):
`ensure_dependencies` re-runs the script with the project's `.venv` Python when the
current one lacks the packages, else prints a hint and makes `label-studio-ml` exit
non-zero; `follow_launcher` stops the server when `label-studio-ml` is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

REQUIRED = ("label_studio_ml", "label_studio_sdk", "openai", "dotenv", "flask")
EXIT_MISSING = 3


def missing_module() -> str | None:
    """The first required package this interpreter cannot import, or None."""
    import importlib.util

    return next((name for name in REQUIRED if importlib.util.find_spec(name) is None), None)


def venv_python(root: Path) -> Path | None:
    """The project's virtualenv interpreter (`.venv`, as scripts/setup_venv.sh creates it), if any."""
    for venv in (root / ".venv", root / "venv"):
        for python in (venv / "bin" / "python", venv / "Scripts" / "python.exe"):
            if python.is_file():
                return python
    return None


def _process(pid: int) -> tuple[int, list[str]] | None:
    """(parent pid, command line) of a live `pid` from /proc (Linux); None when gone, a zombie, or not Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    if state in ("Z", "X"):
        return None
    return int(ppid), [part.decode(errors="replace") for part in cmdline if part]


def _is_launcher(cmdline: list[str]) -> bool:
    return any(Path(part).name == "label-studio-ml" for part in cmdline[:2]) and "start" in cmdline


def launcher_pid() -> int | None:
    """The `label-studio-ml start` process this server was started by, if any (Linux)."""
    pid = os.getppid()
    for _ in range(4):  # label-studio-ml -> sh -c -> python (-> the debug reloader's child)
        info = _process(pid) if pid > 1 else None
        if info is None:
            return None
        if _is_launcher(info[1]):
            return pid
        pid = info[0]
    return None


def ensure_dependencies(root: Path, script: str) -> None:
    """Run with the project's venv when this Python lacks the packages; else explain and fail."""
    missing = missing_module()
    if missing is None:
        return
    python = venv_python(root)
    if python is not None and Path(sys.prefix).resolve() != python.parent.parent.resolve():
        print(
            f"当前 Python ({sys.executable}) 缺少 {missing}，改用 {python} 启动 "
            f"(this Python lacks {missing}: starting with {python}; activate the venv to skip this step)",
            file=sys.stderr,
            flush=True,
        )
        os.execv(str(python), [str(python), script, *sys.argv[1:]])
    print(
        f"❌ 当前 Python ({sys.executable}) 缺少依赖 {missing} (missing package). "
        f"label-studio-ml start 使用 PATH 中的 python：请先安装并激活虚拟环境 "
        f"(it runs the `python` on PATH: install and activate the venv first):\n"
        f"    bash scripts/setup_venv.sh requirements.txt   # 创建 .venv (creates .venv)\n"
        f"    source .venv/bin/activate\n"
        f"    label-studio-ml start ./my_ml_backend\n"
        f"或直接用 (or simply): bash scripts/start.sh",
        file=sys.stderr,
        flush=True,
    )
    launcher = launcher_pid()
    if launcher is not None:
        # label-studio-ml ignores our exit status; ending it is the only way its caller sees a failure.
        os.kill(launcher, signal.SIGTERM)
    sys.exit(EXIT_MISSING)


def follow_launcher(interval: float = 0.5) -> None:
    """When started by `label-studio-ml start`, stop serving as soon as that process is gone."""
    launcher = launcher_pid()
    if launcher is None:
        return

    def watch() -> None:
        while True:
            time.sleep(interval)
            info = _process(launcher)
            if info is None or not _is_launcher(info[1]):
                logger.info("label-studio-ml 已退出，后端随之停止 (label-studio-ml exited: stopping the server)")
                os._exit(0)

    threading.Thread(target=watch, name="follow-label-studio-ml", daemon=True).start()
