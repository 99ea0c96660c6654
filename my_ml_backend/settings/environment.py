"""The environment variables (and `.env`), read and checked: a wrong value stops the start, naming it.

One field per variable, named as the variable, in the user's own terms (`ML_TIMEOUT_PREDICT` in
seconds of Label Studio's timeout, `LLM_CACHE_TTL_DAYS` in days, `auto`/`off` words); `Settings`
(`settings.settings`) turns them into what the code uses. Unset, empty or blank: None, so the
defaults are `Settings`' own. Reading never touches the network and never needs the API key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import find_dotenv, load_dotenv
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """Wrong environment variables: one line naming each, in Chinese and English."""


_OFF_WORDS = {"0": "off", "false": "off", "no": "off", "none": "off", "disabled": "off"}
_ON_WORDS = {"1": "on", "true": "on", "yes": "on", "enabled": "on"}


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _switch(value: Any) -> Any:
    """Words for on and off as `on`/`off` (`1` is on: it is no threshold of P(complete) anyone means)."""
    value = _lower(value)
    return _OFF_WORDS.get(value, _ON_WORDS.get(value, value)) if isinstance(value, str) else value


def _off(value: Any) -> Any:
    value = _lower(value)
    return _OFF_WORDS.get(value, value) if isinstance(value, str) else value


Number = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Word = BeforeValidator(_lower)


class Environment(BaseSettings):
    """The variables the backend reads (README lists each); None: not set."""

    model_config = SettingsConfigDict(case_sensitive=False, env_ignore_empty=True, extra="ignore", frozen=True)

    # the endpoint and the model
    modelscope_api_key: SecretStr | None = None
    modelscope_api_url: str | None = None
    modelscope_model: str | None = None
    modelscope_fallback_models: str | None = None  # comma list, or none/off/0
    llm_temperature: Number | None = None
    llm_max_tokens: Count | None = None
    llm_top_p: Number | None = None
    llm_timeout: Positive | None = None
    llm_max_retries: Count | None = None
    llm_concurrency: Annotated[int, Field(ge=1)] | None = None
    ml_timeout_predict: Positive | None = None
    llm_output_mode: Annotated[Literal["auto", "json_schema", "json_object", "text"], Word] | None = None
    llm_logprobs: Annotated[Literal["auto"] | bool, Word] | None = None
    llm_repeat_penalty: Annotated[Literal["auto", "off"] | Number, BeforeValidator(_off)] | None = None
    llm_extend_lists: Annotated[
        Literal["auto", "on", "off"] | Annotated[float, Field(gt=0, le=1)], BeforeValidator(_switch)
    ] | None = None
    llm_tasks_per_call: Annotated[Literal["auto"] | Annotated[int, Field(ge=1)], Word] | None = None
    llm_pack_tokens: Annotated[int, Field(ge=100)] | None = None
    llm_quota_reset: str | None = None  # HH:MM [Area/City], parsed by `llm.quota.DayClock`
    # the review score and when not to pre-label
    llm_score: Annotated[
        Literal["auto", "logprobs", "agreement", "models", "verbal", "orders", "off"], BeforeValidator(_off)
    ] | None = None
    llm_score_calls: Annotated[int, Field(ge=0, le=8)] | None = None
    llm_score_majority: Annotated[bool, BeforeValidator(_switch)] | None = None
    llm_score_shares: Annotated[bool, BeforeValidator(_switch)] | None = None
    llm_min_score: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    llm_answer_strategy: Annotated[Literal["auto", "structured", "free-text"], Word] | None = None
    answer_eval_calls: Count | None = None
    llm_retry_plain: Annotated[bool, BeforeValidator(_switch)] | None = None
    # the response cache and shared limits
    llm_cache: Annotated[bool, BeforeValidator(_switch)] | None = None
    redis_url: str | None = None
    llm_cache_ttl_days: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    llm_cache_max_entries: Count | None = None
    llm_slot_lease: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    # few-shot examples and the prompt
    fewshot_examples: Annotated[Literal["auto"] | Count, Word] | None = None
    fewshot_form: Annotated[Literal["block", "chat", "per-label", "labels"], Word] | None = None  # labels: old name
    fewshot_eval_calls: Count | None = None
    fewshot_max_chars: Count | None = None
    llm_instructions: str | None = None
    prompt_file: Path | None = None
    llm_output_language: str | None = None
    llm_reasoning: Annotated[bool, BeforeValidator(_switch)] | None = None
    max_input_chars: Count | None = None
    # Label Studio, the server and its bounds
    label_studio_url: str | None = None
    label_studio_api_key: SecretStr | None = None
    predict_on_import: Annotated[Literal["on", "off"], BeforeValidator(_switch)] | None = None
    backend_public_url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # how Label Studio reaches us
    basic_auth_user: str | None = None
    basic_auth_pass: SecretStr | None = None  # taken as typed: spaces may be part of a password
    max_request_mb: Positive | None = None
    max_config_chars: Annotated[int, Field(ge=1000)] | None = None
    model_cache_chars: Annotated[int, Field(ge=1000)] | None = None
    max_instructions_chars: Count | None = None
    predict_slots: Count | None = None  # 0: unbounded
    debug: Annotated[bool, BeforeValidator(_switch)] | None = None
    log_level: str | None = None
    log_dir: Path | None = None
    data_dir: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """Values are stripped (a password is not) and a blank one counts as unset, as an empty one does."""
        if not isinstance(data, dict):
            return data
        stripped = {
            key: value.strip() if isinstance(value, str) and key.lower() != "basic_auth_pass" else value
            for key, value in data.items()
        }
        return {key: value for key, value in stripped.items() if value != ""}

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        *_others: PydanticBaseSettingsSource, **_named: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `read_environment` passes: the mapping it reads is the whole environment."""
        return (init_settings,)


class _VariablesIn(EnvSettingsSource):
    """pydantic-settings' reader of environment variables, over a given mapping (tests pass their own)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items() if value != ""}


def read_environment(environ: Mapping[str, str] | None = None) -> Environment:
    """The variables of `environ` (default: the process's), checked; SettingsError names each wrong one."""
    values = _VariablesIn(Environment, os.environ if environ is None else environ)()
    try:
        return Environment(**values)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """One line: each wrong variable with its value (a secret's never) and what it must be."""
    by_variable: dict[str, tuple[object, list[str]]] = {}
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]).upper() if error["loc"] else "?"
        value, reasons = by_variable.setdefault(name, (error.get("input"), []))
        if error["msg"] not in reasons:
            reasons.append(error["msg"])
    parts = []
    for name, (value, reasons) in by_variable.items():
        shown = "" if name.endswith(("_KEY", "_PASS")) else f"={value!r}"
        parts.append(f"环境变量 {name}{shown} 无效 (invalid {name}): {' / '.join(reasons)}")
    return "; ".join(parts)


def load_env_file() -> None:
    """Load `.env` from the working directory or the project root, never overriding real env vars."""
    for candidate in (find_dotenv(usecwd=True), str(PACKAGE_DIR.parent / ".env"), str(PACKAGE_DIR / ".env")):
        if candidate and Path(candidate).is_file():
            load_dotenv(candidate, override=False)
