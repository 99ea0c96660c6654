"""`batch_predict.py --queue` against a real Label Studio, two `rq worker` processes and a real Redis.

One worker is killed with kill -9 in the middle of the run and the command is
interrupted; re-running it completes every task exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY
from tests.e2e.conftest import StartBackend, report
from tests.e2e.label_studio import ROOT, LabelStudioClient, LabelStudioServer
from tests.e2e.test_label_studio_e2e import ANALYSIS, by_task, check_each_once, connected_project, labeler, wait_for
from tests.fake_llm import server as fake

pytestmark = pytest.mark.e2e

TASKS = 60
CONCURRENCY = 2  # shared by both workers through Redis
LEASE = 3.0  # LLM_SLOT_LEASE: how long a killed worker's slots and task claims last


def environment(label_studio: LabelStudioServer, llm: fake.FakeLLMServer, redis_url: str, where: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE_", "LLM_", "LABEL_STUDIO_"))}
    env.update({
        "MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url, "LLM_MAX_RETRIES": "1",
        "LLM_CONCURRENCY": str(CONCURRENCY), "LLM_SLOT_LEASE": str(LEASE), "REDIS_URL": redis_url,
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.installation.token,
        "DATA_DIR": str(where / "data"), "LOG_DIR": str(where / "logs"), "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def start_worker(env: dict, where: Path, name: str) -> subprocess.Popen:
    """`rq worker llm-preannotation` in its own session, so kill -9 takes its work-horse too."""
    rq = Path(sys.executable).parent / "rq"
    log = open(where / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
    args = ["worker", "--url", env["REDIS_URL"], "--name", name, "-w", "my_ml_backend.jobs.queue.ChunkWorker"]
    return subprocess.Popen([str(rq), *args, "llm-preannotation"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def interruptible() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt.

    A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored,
    and Python keeps an ignored SIGINT ignored: the interrupt below would do nothing.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command(env: dict, project: int, cwd: Path) -> list[str]:
    return [sys.executable, str(ROOT / "batch_predict.py"), "--queue", "--no-progress", "--chunk-size", "5",
            "--project", str(project)]


def test_queued_batch_survives_a_killed_worker_and_resumes(
    ls: LabelStudioClient, label_studio: LabelStudioServer, start_backend: StartBackend,
    llm: fake.FakeLLMServer, redis_db: str, tmp_path: Path,
) -> None:
    project, task_ids, markers, version = connected_project(ls, start_backend(), "e2e queued batch", TASKS)
    llm.set_responder(labeler)
    llm.latency = 0.5  # 45 tasks left after the kill take seconds, not the 1 s before the interrupt
    env = environment(label_studio, llm, redis_db, tmp_path)
    workers = [start_worker(env, tmp_path, f"worker{i}") for i in range(2)]
    try:
        started, before = time.monotonic(), llm.chat_calls
        first = subprocess.Popen(command(env, project, tmp_path), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
        # The fake LLM's own count: Label Studio's listing lags behind the calls (10 listed at the 15th call).
        assert wait_for(lambda: llm.chat_calls >= before + 15, timeout=120), "the workers predict nothing"
        os.killpg(workers[0].pid, signal.SIGKILL)  # one worker dies mid-chunk, holding claims and slots
        killed_at = len(ls.predictions(project))
        time.sleep(1)
        first.send_signal(signal.SIGINT)  # the user interrupts the command too
        out, err = first.communicate(timeout=120)
        report(f"queued run 1: worker killed after {killed_at} predictions; exit {first.returncode}: "
               + " | ".join(out.splitlines()[1:4]))
        assert first.returncode == 1 and "interrupted" in out, out + err
        assert len(ls.predictions(project)) < TASKS

        second = subprocess.run(command(env, project, tmp_path), cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=300)
        elapsed = time.monotonic() - started
        report(f"queued run 2 (resume): exit {second.returncode} after {elapsed:.1f} s in all; "
               + " | ".join(second.stdout.splitlines()[1:4]) + f"; LLM requests in all: {llm.chat_calls}")
        assert second.returncode == 0, second.stdout + second.stderr
        stored = by_task(ls.predictions(project))
        assert sorted(stored) == sorted(task_ids)  # every task predicted ...
        check_each_once(stored, ANALYSIS, version, markers)  # ... once, valid, of the run's version
        assert llm.chat_calls <= TASKS + CONCURRENCY  # at most the killed worker's requests in flight are repeated

        third = subprocess.run(command(env, project, tmp_path), cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=120)
        assert third.returncode == 0 and "API 调用 (API calls): 0;" in third.stdout, third.stdout + third.stderr
        assert f"skipped, already predicted): {TASKS}" in third.stdout, third.stdout
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(20)
