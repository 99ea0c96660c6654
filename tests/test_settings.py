from pathlib import Path

import pytest

from my_ml_backend.settings import DEFAULT_API_URL, DEFAULT_MODEL, load_settings, normalize_base_url


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
    assert s.api_key == "ms-abc"
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
