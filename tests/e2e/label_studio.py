"""A real Label Studio 1.23.2 process for the end-to-end tests, and a small HTTP client for it.

Why a real server: what decides whether users get predictions is Label Studio's side of
the protocol (which tasks it skips, how it matches items to tasks, what it stores, which
webhooks it sends), and that can only be pinned down by running it. Label Studio lives in
its own cached virtualenv (scripts/label_studio_env.sh), because its dependencies clash
with the backend's; the tests only copy an initialised data dir and start it.

The client is plain urllib on purpose: no dependency beyond the standard library, and
every request and answer is visible as it is on the wire when an assertion fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "label_studio_env.sh"

# Label Studio blocks ML backends and webhooks on private addresses unless told otherwise
# (an ML backend on 127.0.0.1 would be refused, its /webhook silently not created), and
# must not call home from a test run.
LABEL_STUDIO_ENV = {
    "ML_BLOCK_LOCAL_IP": "false",
    "SSRF_PROTECTION_ENABLED": "false",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "CONVERTER_DOWNLOAD_RESOURCES": "false",
}
# Only these are taken from the caller's environment: Label Studio reads many bare names
# (HOST, PORT, USERNAME, DATABASE_NAME, ...) that a developer's shell or CI may set.
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")


class LabelStudioUnavailable(RuntimeError):
    """Label Studio could not be installed (typically: no network to reach the package index)."""


@dataclass(frozen=True)
class Installation:
    """What scripts/label_studio_env.sh built: paths and the fixed test credentials."""

    version: str
    python: Path
    label_studio: Path
    data_template: Path
    username: str
    password: str
    token: str


def install(timeout: float = 1800) -> Installation:
    """Run the installer (a no-op when the cache is warm) and read what it built.

    The installer gets this interpreter as LS_PYTHON so the Label Studio venv uses the
    same Python version as the tests, whatever `python3` is on the machine.
    """
    if shutil.which("bash") is None:
        raise LabelStudioUnavailable("bash is needed to run scripts/label_studio_env.sh")
    env = {**os.environ}
    env.setdefault("LS_PYTHON", sys.executable)
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabelStudioUnavailable(f"{INSTALL_SCRIPT.name} did not finish in {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise LabelStudioUnavailable(f"{INSTALL_SCRIPT.name} failed (exit {proc.returncode}):\n{tail}")
    python = Path(proc.stdout.strip().splitlines()[-1])
    info = json.loads((python.parent.parent.parent / "e2e-env.json").read_text(encoding="utf-8"))
    return Installation(
        version=info["version"],
        python=Path(info["python"]),
        label_studio=Path(info["label_studio"]),
        data_template=Path(info["data_template"]),
        username=info["username"],
        password=info["password"],
        token=info["token"],
    )


class LabelStudioError(AssertionError):
    """An unexpected HTTP status from Label Studio; the message carries request and answer."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {json.dumps(body, ensure_ascii=False)[:2000]}")
        self.status = status
        self.body = body


class LabelStudioClient:
    """JSON over HTTP with the legacy `Authorization: Token ...` header (enabled at init)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 180) -> tuple[int, Any]:
        """Status and decoded body; never raises for an HTTP status (callers decide)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Token {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, {"raw": raw[:2000].decode(errors="replace")}

    def call(self, method: str, path: str, body: Any = None, *, expect: tuple[int, ...] = (200, 201, 204)) -> Any:
        """Body of a request that must succeed; raises `LabelStudioError` with the details otherwise."""
        status, answer = self.request(method, path, body)
        if status not in expect:
            raise LabelStudioError(method, path, status, answer)
        return answer

    # -- projects and tasks ------------------------------------------------------------

    def create_project(self, title: str, label_config: str) -> int:
        """A project whose tasks are only predicted when asked (no automatic retrieval)."""
        body = {"title": title, "label_config": label_config, "evaluate_predictions_automatically": False}
        return self.call("POST", "/api/projects/", body)["id"]

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        answer = self.call("POST", f"/api/projects/{project}/import?return_task_ids=true", tasks)
        return answer["task_ids"]

    def project(self, project: int) -> dict:
        return self.call("GET", f"/api/projects/{project}/")

    def set_label_config(self, project: int, label_config: str) -> None:
        self.call("PATCH", f"/api/projects/{project}/", {"label_config": label_config})

    def open_task(self, task: int) -> dict:
        """GET /api/tasks/{id} as the labeling view does (predicts a task that has no prediction)."""
        return self.call("GET", f"/api/tasks/{task}/")

    # -- ML backends -------------------------------------------------------------------

    def add_ml_backend(self, project: int, url: str, title: str = "llm", **fields: Any) -> dict:
        """Connect a backend (Label Studio checks /health and /setup before saving it)."""
        return self.call("POST", "/api/ml/", {"url": url, "project": project, "title": title, **fields})

    def retrieve_predictions(self, project: int) -> dict:
        """The Data Manager's "Retrieve Predictions" action on all tasks of the project."""
        body = {"selectedItems": {"all": True, "excluded": []}}
        return self.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", body)

    def predictions(self, project: int) -> list[dict]:
        """Every stored prediction of the project (read without triggering any prediction)."""
        return self.call("GET", f"/api/predictions/?project={project}")

    def task_predictions(self, task: int) -> list[dict]:
        return self.call("GET", f"/api/predictions/?task={task}")

    def train(self, ml_backend: int) -> None:
        self.call("POST", f"/api/ml/{ml_backend}/train")

    def interactive_annotating(self, ml_backend: int, task: int, context: Any) -> dict:
        return self.call("POST", f"/api/ml/{ml_backend}/interactive-annotating", {"task": task, "context": context})

    def webhooks(self, project: int) -> list[dict]:
        return self.call("GET", f"/api/webhooks/?project={project}")

    # -- annotations -------------------------------------------------------------------

    def create_annotation(self, task: int, result: list[dict]) -> int:
        return self.call("POST", f"/api/tasks/{task}/annotations/", {"result": result, "was_cancelled": False})["id"]

    def update_annotation(self, annotation: int, result: list[dict]) -> None:
        self.call("PATCH", f"/api/annotations/{annotation}/", {"result": result})

    def delete_annotation(self, annotation: int) -> None:
        self.call("DELETE", f"/api/annotations/{annotation}/")


class LabelStudioServer:
    """`label-studio start` on a free port with a fresh copy of the template data dir."""

    def __init__(self, installation: Installation, workdir: Path, start_timeout: float = 120) -> None:
        self.installation = installation
        self.workdir = workdir
        self.data_dir = workdir / "data"
        shutil.copytree(installation.data_template, self.data_dir)
        self.log_path = workdir / "label_studio.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Label Studio moves to the next port when the chosen one is taken between our
        # check and its bind; then we would talk to someone else, so start again instead.
        for _attempt in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            if self._start(start_timeout):
                break
        else:
            raise RuntimeError(f"Label Studio did not start on a free port:\n{self.log_tail()}")
        self.client = LabelStudioClient(self.url, installation.token)

    def _env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        home = self.workdir / "home"  # nothing may land in the developer's home directory
        home.mkdir(exist_ok=True)
        env.update(LABEL_STUDIO_ENV)
        env.update({"HOME": str(home), "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1"})
        return env

    def _start(self, timeout: float) -> bool:
        """Start and wait until it answers on OUR port; False if it had to pick another one."""
        started = time.monotonic()
        cmd = [str(self.installation.label_studio), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self._env(), stdout=log, stderr=subprocess.STDOUT)
        banner = f"Starting development server at http://127.0.0.1:{self.port}/"
        while time.monotonic() - started < timeout:
            log_text = self.log_path.read_text(encoding="utf-8", errors="replace")
            if f"Port {self.port} is in use" in log_text:
                self._terminate()
                return False
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.proc.returncode}:\n{self.log_tail()}")
            if banner in log_text and self._answers():
                self.startup_seconds = time.monotonic() - started
                return True
            time.sleep(0.2)
        self._terminate()
        raise RuntimeError(f"Label Studio did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        """True when the API answers with our token (proves the user and legacy token exist)."""
        client = LabelStudioClient(self.url, self.installation.token)
        try:
            status, body = client.request("GET", "/api/current-user/whoami", timeout=5)
        except OSError:
            return False
        return status == 200 and isinstance(body, dict) and body.get("email") == self.installation.username

    def db_rows(self, sql: str, *params: Any) -> list[tuple]:
        """Read Label Studio's sqlite directly, for state its API recomputes on every read."""
        with sqlite3.connect(f"file:{self.data_dir / 'label_studio.sqlite3'}?mode=ro", uri=True, timeout=10) as db:
            return db.execute(sql, params).fetchall()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def _terminate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        self._terminate()
