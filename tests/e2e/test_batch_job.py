"""`batch_predict.py` against a real Label Studio: the way to pre-annotate a big project.

It must agree with the backend on `model_version` (tasks predicted by either are
skipped by both), resume after a partial run without duplicates or paid repeats, and
leave failed tasks for the next run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY
from tests.e2e.conftest import StartBackend, report
from tests.e2e.label_studio import ROOT, LabelStudioClient, LabelStudioServer
from tests.e2e.test_label_studio_e2e import (
    ANALYSIS,
    by_task,
    check_each_once,
    connected_project,
    failing_for,
    labeler,
)
from tests.fake_llm import server as fake

pytestmark = pytest.mark.e2e


def run_batch(
    label_studio: LabelStudioServer,
    llm: fake.FakeLLMServer,
    tmp_path: Path,
    *args: str,
    api_key: str | None = None,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, with the backend's settings in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE_", "LLM_", "LABEL_STUDIO_"))}
    env.update(
        {
            "MODELSCOPE_API_KEY": TEST_KEY,
            "MODELSCOPE_API_URL": llm.base_url,
            "LLM_MAX_RETRIES": "1",
            "LLM_CONCURRENCY": "2",
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": api_key or label_studio.installation.token,
            "DATA_DIR": str(tmp_path / "batch-data"),
            "LOG_DIR": str(tmp_path / "batch-logs"),
            **(env_extra or {}),
        }
    )
    cmd = [sys.executable, str(ROOT / "batch_predict.py"), "--no-progress", *args]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    # Its summary when it ran, else what it said on stderr (an argparse error leaves stdout empty).
    said = proc.stdout.splitlines()[1:4] or proc.stderr.strip().splitlines()[-2:] or ["(no output)"]
    report(f"batch_predict {' '.join(args)} -> exit {proc.returncode}: " + " | ".join(said))
    return proc


def test_batch_job_skips_backend_predictions_resumes_and_retries_failures(
    ls: LabelStudioClient,
    label_studio: LabelStudioServer,
    start_backend: StartBackend,
    llm: fake.FakeLLMServer,
    tmp_path: Path,
) -> None:
    project, task_ids, markers, version = connected_project(ls, start_backend(), "e2e batch job", 10)
    broken = next(task_id for task_id, mark in markers.items() if mark == "T7")

    llm.set_responder(failing_for({"T7"}, fake.server_error))
    for task_id in task_ids[:2]:  # the labeling view predicts these two through the backend
        ls.open_task(task_id)
    assert len(ls.predictions(project)) == 2 and llm.chat_calls == 2

    partial = run_batch(label_studio, llm, tmp_path, "--project", str(project), "--limit", "3")
    assert partial.returncode == 1, partial.stdout + partial.stderr  # tasks remain
    assert "reached --limit" in partial.stdout
    assert "API 调用 (API calls): 3;" in partial.stdout and "tokens: 0 + 0" not in partial.stdout
    assert len(ls.predictions(project)) == 5 and llm.chat_calls == 5

    full = run_batch(label_studio, llm, tmp_path, "--project", str(project))
    assert full.returncode == 1, full.stdout + full.stderr  # T7 failed
    assert "posted): 4; 失败 (failed): 1" in full.stdout, full.stdout
    assert "skipped, already predicted): 5" in full.stdout, full.stdout
    stored = by_task(ls.predictions(project))
    assert sorted(stored) == sorted(set(task_ids) - {broken})

    llm.set_responder(labeler)  # the fault clears: only T7 is predicted again
    calls = llm.chat_calls
    final = run_batch(label_studio, llm, tmp_path, "--project", str(project))
    assert final.returncode == 0, final.stdout + final.stderr
    assert llm.chat_calls == calls + 1
    again = run_batch(label_studio, llm, tmp_path, "--project", str(project))
    assert again.returncode == 0 and llm.chat_calls == calls + 1  # nothing left, nothing paid
    assert "API 调用 (API calls): 0" in again.stdout, again.stdout

    stored = by_task(ls.predictions(project))
    assert sorted(stored) == sorted(task_ids)
    check_each_once(stored, ANALYSIS, version, markers)
    ls.retrieve_predictions(project)  # the backend skips them all: same model_version
    assert len(ls.predictions(project)) == 10 and llm.chat_calls == calls + 1


def test_batch_job_explains_a_wrong_label_studio_key(
    label_studio: LabelStudioServer, llm: fake.FakeLLMServer, tmp_path: Path
) -> None:
    wrong = "wrong-token-0123456789abcdef"
    proc = run_batch(label_studio, llm, tmp_path, "--project", "1", api_key=wrong)
    assert proc.returncode == 2
    assert "无法读取项目 1 (cannot read project)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert wrong not in proc.stdout + proc.stderr
    assert llm.chat_calls == 0


def test_batch_dry_run_estimates_without_a_call(
    ls: LabelStudioClient,
    label_studio: LabelStudioServer,
    start_backend: StartBackend,
    llm: fake.FakeLLMServer,
    tmp_path: Path,
) -> None:
    project, _, _, _ = connected_project(ls, start_backend(), "e2e dry run", 12)
    dry = run_batch(label_studio, llm, tmp_path, "--project", str(project), "--dry-run",
                    env_extra={"LLM_TASKS_PER_CALL": "4"})
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "待预测 (to predict): 12" in dry.stdout, dry.stdout
    assert "调用次数 (calls) at LLM_TASKS_PER_CALL=4: 3" in dry.stdout, dry.stdout
    assert "今日额度是否够用 (fits in today's quota): 未知 (unknown)" in dry.stdout
    assert llm.chat_calls == 0 and ls.predictions(project) == []
