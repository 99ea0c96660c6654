"""The four top-level diagnostic scripts as users run them: --help, errors, outside the venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import check_modelscope_env
from tests.conftest import ROOT, TEST_KEY, Backend
from tests.fake_llm import server as fake

SCRIPTS = ["check_modelscope_env.py", "check_openai_client.py", "check_modelscope_text.py", "check_ml_backend.py"]
OLD_NAMES = ["test_openai_client.py", "test_modelscope_text.py", "test_ml_backend.py"]  # kept as aliases


def run(script: str, *args: str, env: dict[str, str] | None = None, python: str = sys.executable) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE_", "LLM_"))}
    base.update({"LLM_CACHE": "off", "LOG_DIR": "/tmp/diag-logs", **(env or {})})
    proc = subprocess.run(
        [python, str(ROOT / script), *args], env=base, capture_output=True, text=True, timeout=120, cwd=ROOT / "tests"
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS + OLD_NAMES)
def test_help_exits_0_without_any_api_call(script: str, llm: fake.FakeLLMServer) -> None:
    code, out = run(script, "--help", env={"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url})
    assert code == 0 and out.startswith("usage:"), out
    assert llm.requests == []  # not even GET /models


def test_no_doubled_emoji_on_a_missing_key(llm: fake.FakeLLMServer) -> None:
    code, out = run("check_openai_client.py", env={"MODELSCOPE_API_URL": llm.base_url})
    assert code == 1 and "❌ API Key未设置" in out and "❌ ❌" not in out, out


@pytest.mark.parametrize(
    ("key", "reply", "calls"),
    [("", None, 0), (TEST_KEY, fake.auth_failed, 1), (TEST_KEY, fake.quota_exhausted, 1)],
    ids=["no key", "bad key", "quota"],
)
def test_modelscope_text_stops_after_an_error_every_task_would_repeat(
    llm: fake.FakeLLMServer, key: str, reply: object, calls: int
) -> None:
    if reply is not None:
        llm.set_responder(lambda _req: reply())
    code, out = run("check_modelscope_text.py", env={"MODELSCOPE_API_KEY": key, "MODELSCOPE_API_URL": llm.base_url})
    assert code == 1 and "已停止 (stopped" in out and out.count("❌") == 1 and "❌ ❌" not in out, out
    assert "=== code_comments ===" not in out  # the second of the five task types never ran
    assert llm.chat_calls == calls


def test_check_env_outside_the_venv_names_missing_packages_and_the_venv(bare_python: Path) -> None:
    code, out = run("check_modelscope_env.py", "--offline", python=str(bare_python / "python"))
    assert code == 1 and "Traceback" not in out, out
    for dist in ("label-studio-ml", "openai", "python-dotenv"):
        assert f"❌ {dist}: 未安装 (not installed)" in out
    assert ".venv" in out and "source .venv/bin/activate" in out and "not the project's venv" in out


def test_check_env_warns_on_a_key_that_is_not_a_modelscope_token() -> None:
    code, out = run("check_modelscope_env.py", "--offline", env={"MODELSCOPE_API_KEY": "sk-0123456789abcdef0123"})
    assert "does not look like a ModelScope token" in out and "0123456789abcdef" not in out, out
    code, out = run("check_modelscope_env.py", "--offline", env={"MODELSCOPE_API_KEY": TEST_KEY})
    assert code == 0 and "does not look like" not in out and TEST_KEY not in out, out


def test_versions_are_compared_with_what_the_project_installs() -> None:
    wanted = check_modelscope_env.wanted_versions("label-studio-ml==1.0.9\nredis>=5,<9  # shared\n-r other.txt\n")
    assert wanted == {"label-studio-ml": "==1.0.9", "redis": ">=5,<9"}
    assert check_modelscope_env.satisfies("1.0.9", "==1.0.9") and not check_modelscope_env.satisfies("1.0.8", "==1.0.9")
    assert check_modelscope_env.satisfies("8.1.0", ">=5,<9") and not check_modelscope_env.satisfies("9.0", ">=5,<9")


def test_ml_backend_script_shows_the_backend_error_once(keyless_backend: Backend) -> None:
    code, out = run("check_ml_backend.py", keyless_backend.url)
    assert code == 1 and "❌ /predict: API Key未设置" in out and "❌ ❌" not in out, out
