import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from my_ml_backend.settings import (
    DEFAULT_API_URL,
    DEFAULT_MODEL,
    SERVED_MODELS_2026,
    Settings,
    SettingsError,
    endpoint_profile,
    load_settings,
    normalize_base_url,
    reveal,
)
from tests.conftest import ROOT


def test_defaults_need_no_key() -> None:
    s = load_settings({})
    assert s.api_key is None and not s.has_api_key
    assert s.base_url == DEFAULT_API_URL
    assert s.model == DEFAULT_MODEL
    assert s.temperature == 0.1
    assert s.timeout == 60
    assert s.max_input_chars == 4000
    assert s.debug is False


@pytest.mark.parametrize(
    "url",
    [
        "https://api-inference.modelscope.cn/v1",
        "https://api-inference.modelscope.cn/v1/",
        "https://api-inference.modelscope.cn/v1/chat/completions",
        " https://api-inference.modelscope.cn/v1/chat/completions/ ",
    ],
)
def test_url_with_or_without_chat_completions(url: str) -> None:
    assert normalize_base_url(url) == "https://api-inference.modelscope.cn/v1"


def test_env_values_are_read() -> None:
    s = load_settings(
        {
            "MODELSCOPE_API_KEY": " ms-abc ",
            "MODELSCOPE_MODEL": "Qwen/Qwen2.5-7B-Instruct",
            "LLM_TEMPERATURE": "0.5",
            "LLM_MAX_TOKENS": "256",
            "LLM_TOP_P": "0.9",
            "LLM_TIMEOUT": "30",
            "MAX_INPUT_CHARS": "100",
            "LOG_LEVEL": "debug",
            "DATA_DIR": "/tmp/x",
        }
    )
    assert s.api_key is not None and s.api_key.get_secret_value() == "ms-abc"
    assert (s.model, s.temperature, s.max_tokens, s.top_p, s.timeout) == ("Qwen/Qwen2.5-7B-Instruct", 0.5, 256, 0.9, 30)
    assert s.max_input_chars == 100 and s.debug and s.data_dir == Path("/tmp/x")


def test_key_never_in_repr() -> None:
    assert "ms-secret" not in repr(load_settings({"MODELSCOPE_API_KEY": "ms-secret-value"}))


def test_bad_number_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="LLM_TIMEOUT"):
        load_settings({"LLM_TIMEOUT": "soon"})


def test_learning_and_prompt_settings(tmp_path: Path) -> None:
    defaults = load_settings({})
    assert (defaults.fewshot_k, defaults.fewshot_max_chars, defaults.instructions) == (3, 1500, "")
    rules = tmp_path / "rules.txt"
    rules.write_text("  规则：反讽算负面。\n", encoding="utf-8")
    s = load_settings(
        {
            "FEWSHOT_EXAMPLES": "0",
            "FEWSHOT_MAX_CHARS": "800",
            "LLM_INSTRUCTIONS": "电商评论",
            "PROMPT_FILE": str(rules),
            "LLM_OUTPUT_LANGUAGE": "English",
            "LABEL_STUDIO_URL": "http://ls:8080/",
            "LABEL_STUDIO_API_KEY": "ls-secret-token",
        }
    )
    assert (s.fewshot_k, s.fewshot_max_chars, s.output_language) == (0, 800, "English")
    assert s.instructions == "电商评论\n规则：反讽算负面。"
    assert s.label_studio_url == "http://ls:8080" and "ls-secret-token" not in repr(s)


def test_missing_prompt_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PROMPT_FILE"):
        load_settings({"PROMPT_FILE": str(tmp_path / "missing.txt")})


@pytest.mark.parametrize("name, value", [
    ("LLM_TEMPERATURE", "hot"), ("LLM_CONCURRENCY", "0"), ("LLM_OUTPUT_MODE", "xml"), ("LLM_LOGPROBS", "maybe"),
    ("LLM_CACHE", "sometimes"), ("DEBUG", "2"), ("FEWSHOT_EXAMPLES", "-1"), ("FEWSHOT_FORM", "essay"),
    ("LLM_CACHE_TTL_DAYS", "-1"), ("MAX_CONFIG_CHARS", "10"), ("LLM_PACK_TOKENS", "5"), ("LLM_SLOT_LEASE", "0"),
    ("ML_TIMEOUT_PREDICT", "0"), ("LLM_REPEAT_PENALTY", "strong"),
])
def test_a_wrong_value_is_refused_in_one_line_naming_the_variable(name: str, value: str) -> None:
    """What the hand parsers clamped or ignored (LLM_CONCURRENCY=0 ran as 1, DEBUG=2 as off) stops the start."""
    with pytest.raises(SettingsError) as refused:
        load_settings({name: value})
    message = str(refused.value)
    assert name in message and repr(value) in message and "\n" not in message and "invalid" in message


def test_every_wrong_variable_is_named_and_no_secret_is_shown() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({"LLM_TEMPERATURE": "hot", "LLM_MAX_TOKENS": "many", "MODELSCOPE_API_KEY": "ms-secret-value"})
    assert "LLM_TEMPERATURE" in str(refused.value) and "LLM_MAX_TOKENS" in str(refused.value)
    assert "ms-secret" not in str(refused.value)


def test_blank_and_empty_values_are_unset_and_words_ignore_case() -> None:
    assert load_settings({"LLM_TEMPERATURE": "  ", "MODELSCOPE_MODEL": "", "LLM_CONCURRENCY": ""}) == load_settings({})
    s = load_settings({"LLM_OUTPUT_MODE": "JSON_Object", "LLM_LOGPROBS": "On", "DEBUG": "YES", "FEWSHOT_FORM": "Chat"})
    assert (s.output_mode, s.logprobs, s.debug, s.fewshot_form) == ("json_object", True, True, "chat")


def test_a_bad_value_stops_the_server_start_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LOG_DIR": str(tmp_path), "DATA_DIR": str(tmp_path),
           "LLM_TEMPERATURE": "hot"}
    done = subprocess.run([sys.executable, "-c", "import my_ml_backend._wsgi"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("配置错误 (configuration error):") and "LLM_TEMPERATURE='hot'" in line


def test_secrets_are_hidden_until_revealed() -> None:
    s = load_settings({"MODELSCOPE_API_KEY": "ms-key-1234", "BASIC_AUTH_USER": "ann", "BASIC_AUTH_PASS": " pass word ",
                       "LABEL_STUDIO_API_KEY": "ls-token-99", "REDIS_URL": "redis://:pw-123@host:6379/0"})
    assert not any(secret in repr(s) for secret in ("ms-key-1234", "pass word", "ls-token-99", "pw-123"))
    assert (reveal(s.api_key), reveal(s.basic_auth_pass), reveal(s.label_studio_api_key)) == (
        "ms-key-1234", " pass word ", "ls-token-99")  # a password is taken as typed
    assert reveal(load_settings({}).api_key) == "" and load_settings({}).api_key is None


def test_settings_are_immutable_and_copied_with_changes() -> None:
    s = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.model = "other"  # type: ignore[misc]
    changed = s.with_changes(batch_deadline=24 * 3600.0, data_dir="/tmp/elsewhere")
    assert (changed.batch_deadline, changed.data_dir) == (86400.0, Path("/tmp/elsewhere"))
    assert s.batch_deadline == 90.0 and dataclasses.replace(s, batch_deadline=5).batch_deadline == 5
    assert Settings(api_key="k").has_api_key and not Settings().has_api_key


@pytest.mark.parametrize("url, metered, mode, logprobs, penalty, pool", [
    ("https://api-inference.modelscope.cn/v1", True, "json_object", False, None, SERVED_MODELS_2026),
    ("https://dashscope.aliyuncs.com/compatible-mode/v1", True, "json_object", False, None, ()),
    ("https://api-inference.modelscope.ai/v1", True, "json_object", False, None, ()),
    ("http://127.0.0.1:8000/v1", False, "json_schema", True, 1.0, ()),
    ("https://notmodelscope.cn.example.org/v1", False, "json_schema", True, 1.0, ()),
])
def test_the_endpoint_profile_decides_every_auto_setting(
    url: str, metered: bool, mode: str, logprobs: bool, penalty: float | None, pool: tuple[str, ...]
) -> None:
    profile = endpoint_profile(url)
    assert (profile.metered, profile.output_mode, profile.logprobs, profile.repeat_penalty, profile.model_pool) == (
        metered, mode, logprobs, penalty, pool)
    assert profile.tasks_per_call == 1  # packing is opt-in on every endpoint
    s = load_settings({"MODELSCOPE_API_URL": url, "MODELSCOPE_MODEL": "M"})
    assert (s.endpoint, s.wants_logprobs, s.sent_repeat_penalty(), s.fallback_models) == (
        profile, logprobs, penalty, pool)
