"""Configuration read from the environment (and an optional `.env` file).

Everything the backend can be tuned with lives here, so that the rest of the code
receives one immutable `Settings` object instead of reading `os.environ` ad hoc.
Reading settings never touches the network and never requires the API key: the
backend must start (and `/health` answer) even before the user has set a key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from dotenv import find_dotenv, load_dotenv

DEFAULT_API_URL = "https://api-inference.modelscope.cn/v1"
# LLM_EXTEND_LISTS=auto: a list answer with P(complete) under this is asked to go on (`labeling.extension`;
# chosen on the real local model, bench/RESULTS.md).
EXTEND_BELOW = 0.9
DEFAULT_MODEL = "Qwen/Qwen3-Coder-480B-A35B-Instruct"
BACKEND_DIR = Path(__file__).resolve().parent


def load_env_file() -> None:
    """Load `.env` from the working directory or the project root, never overriding real env vars."""
    for candidate in (find_dotenv(usecwd=True), str(BACKEND_DIR.parent / ".env"), str(BACKEND_DIR / ".env")):
        if candidate and Path(candidate).is_file():
            load_dotenv(candidate, override=False)


def normalize_base_url(url: str) -> str:
    """Accept both `…/v1` and the full `…/v1/chat/completions` form users copy from docs.

    The `openai` client appends `/chat/completions` itself, so a URL that already ends
    with it would otherwise be called as `…/chat/completions/chat/completions`.
    """
    url = url.strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)].rstrip("/")
    return url


# Hosts known to mishandle json_schema, and hosts where a refused feature costs quota.
_ALIBABA_HOSTS = ("modelscope.cn", "modelscope.ai", "dashscope.aliyuncs.com", "aliyuncs.com")


def is_alibaba_host(base_url: str) -> bool:
    """ModelScope or DashScope: metered, no logprobs, their own decoding defaults."""
    host = urlparse(base_url).hostname or ""
    return any(host == h or host.endswith("." + h) for h in _ALIBABA_HOSTS)


def _float(
    env: Mapping[str, str], name: str, default: float | None, minimum: float | None = None
) -> float | None:
    """A number setting: finite (`inf` and `nan` parse as floats but mean nothing here), at least `minimum`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"环境变量 {name} 必须是数字 ({name} must be a number), got {raw!r}") from exc
    if not math.isfinite(value):
        raise ValueError(f"环境变量 {name} 必须是有限的数字 ({name} must be a finite number), got {raw!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"环境变量 {name} 不能小于 {minimum:g} ({name} must be at least {minimum:g}), got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    value = _float(env, name, default, minimum)
    return int(value) if value is not None else default


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on", "y"}


def _optional_bool(env: Mapping[str, str], name: str) -> bool | None:
    """None for unset or "auto" (let the backend decide), else the boolean."""
    return None if env.get(name, "").strip().lower() in ("", "auto") else _bool(env, name)


_OFF = ("off", "0", "false", "no", "none")


def _auto_off_or_number(env: Mapping[str, str], name: str, auto: float | None) -> float | None:
    """A setting that is "auto" (unset too: `auto`), "off" (0.0) or a number (anything else raises, naming it)."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "auto"):
        return auto
    return 0.0 if raw in _OFF else _float(env, name, None)


def _repeat_penalty(env: Mapping[str, str]) -> float | None:
    """LLM_REPEAT_PENALTY: "auto" (None), "off" (0.0: never sent) or the value to send."""
    return _auto_off_or_number(env, "LLM_REPEAT_PENALTY", None)


def _extend_below(env: Mapping[str, str]) -> float:
    """LLM_EXTEND_LISTS: "auto" or "on" (the measured default), "off", or the P(complete) under which a list goes on."""
    raw = env.get("LLM_EXTEND_LISTS", "").strip().lower()
    on = raw in ("on", "true", "yes", "1")
    value = EXTEND_BELOW if on else _auto_off_or_number(env, "LLM_EXTEND_LISTS", EXTEND_BELOW)
    if value is None or not (raw in _OFF or 0 < value <= 1):
        raise ValueError(f"LLM_EXTEND_LISTS 只能是 auto、off 或 (0, 1] 之间的数 (auto, off or a number), got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or allowed[0]
    if raw not in allowed:
        raise ValueError(f"环境变量 {name} 只能是 ({name} must be one of) {', '.join(allowed)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Immutable backend configuration; see README for each environment variable."""

    api_key: str | None = field(default=None, repr=False)  # repr=False: never printed by accident
    base_url: str = DEFAULT_API_URL
    model: str = DEFAULT_MODEL
    temperature: float = 0.1
    max_tokens: int = 1024
    top_p: float | None = None
    timeout: float = 60.0
    max_retries: int = 2
    max_input_chars: int = 4000
    debug: bool = False
    log_dir: Path = BACKEND_DIR.parent / "logs"
    data_dir: Path = BACKEND_DIR / "data"
    concurrency: int = 1  # ModelScope's free tier allows about one request at a time
    batch_deadline: float = 90.0  # Label Studio's ML_TIMEOUT_PREDICT (100 s) minus a margin
    output_mode: str = "auto"  # auto | json_schema | json_object | text
    logprobs: bool | None = None  # None: on, except for ModelScope/DashScope
    # None: "auto", 1.0 (no penalty) except for ModelScope/DashScope; 0.0: "off", never sent
    repeat_penalty: float | None = None
    # LLM_EXTEND_LISTS: a list answer whose P(complete) is under this is asked once more, made to go on
    # (`labeling.extension`); 0 = off. Needs logprobs and an endpoint that enforces the schema.
    extend_below: float = EXTEND_BELOW
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    cache_enabled: bool = True  # LLM_CACHE
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    cache_ttl: float = 30 * 86400.0  # seconds; 0: entries never expire
    cache_max_entries: int = 100_000  # SQLite only; 0: unbounded
    fewshot_k: int = 3  # FEWSHOT_EXAMPLES: annotated examples shown per task; 0 turns few-shot off
    fewshot_auto: bool = True  # FEWSHOT_EXAMPLES=auto: per project, count and form chosen from evidence
    fewshot_form: str = "block"  # FEWSHOT_FORM: style of an explicit count (block | chat | labels)
    fewshot_eval_calls: int = 60  # FEWSHOT_EVAL_CALLS: calls one auto evaluation may spend; 0: none, no examples
    fewshot_max_chars: int = 1500  # FEWSHOT_MAX_CHARS: prompt budget for them (~1 token per CJK char)
    instructions: str = ""  # LLM_INSTRUCTIONS or the PROMPT_FILE's text: added to every prompt
    output_language: str = ""  # LLM_OUTPUT_LANGUAGE: language of free-text answers
    reasoning: bool = False  # LLM_REASONING=on: the model writes a short reason before its answers
    label_studio_url: str | None = None  # LABEL_STUDIO_URL: lets START_TRAINING re-read annotations
    label_studio_api_key: str | None = field(default=None, repr=False)  # LABEL_STUDIO_API_KEY
    # Bounds on what a client can make the server hold (see README "暴露与安全 / Exposure and security").
    max_request_bytes: int = 100 * 1024 * 1024  # MAX_REQUEST_MB: larger bodies get a 413 before being read
    max_config_chars: int = 1_000_000  # MAX_CONFIG_CHARS: one labeling config
    model_cache_chars: int = 4_000_000  # MODEL_CACHE_CHARS: configs kept parsed per worker (~80 B of RAM per char)
    max_instructions_chars: int = 20_000  # MAX_INSTRUCTIONS_CHARS: a project's ML extra params (instructions)
    predict_slots: int | None = None  # PREDICT_SLOTS: concurrent /predict per worker; None = unbounded
    slot_lease: float = 15.0  # LLM_SLOT_LEASE: seconds a killed process may keep a shared slot (REDIS_URL)
    fallback_models: tuple[str, ...] = ()  # MODELSCOPE_FALLBACK_MODELS: tried in order after `model`
    tasks_per_call: int | None = None  # LLM_TASKS_PER_CALL: N tasks per chat call, 0 = auto, None = endpoint default
    pack_token_budget: int = 1500  # LLM_PACK_TOKENS: prompt tokens of task text per packed call (auto)
    quota_reset: str = "00:00 Asia/Shanghai"  # LLM_QUOTA_RESET: when the free tier's quota day starts

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key)

    @property
    def fewshot_enabled(self) -> bool:
        """Annotations are kept as examples (automatic choice, or an explicit count above 0)."""
        return self.fewshot_auto or self.fewshot_k > 0

    def sent_repeat_penalty(self) -> float | None:
        """The `repeat_penalty` requests carry, or None (see `llm.client` for why 1.0 by default)."""
        if self.repeat_penalty is None:  # auto
            return None if is_alibaba_host(self.base_url) else 1.0
        return self.repeat_penalty or None  # 0.0: off

    def without_extension(self) -> Settings:
        """These settings with list extension off: what the project's annotations turned it off to, and the
        zero-shot version the few-shot evaluation runs as (`engine`)."""
        return replace(self, extend_below=0.0)

    @property
    def wants_logprobs(self) -> bool:
        """LLM_LOGPROBS, or by default on except for ModelScope/DashScope (they return none)."""
        return self.logprobs if self.logprobs is not None else not is_alibaba_host(self.base_url)

    @property
    def extends_lists(self) -> bool:
        """Whether a list closed in doubt may be asked again (`labeling.extension`): it needs logprobs
        and a mode that sends the schema to the decoder (`auto` finds one)."""
        return self.extend_below > 0 and self.wants_logprobs and self.output_mode in ("auto", "json_schema")

    def generation_fingerprint(self) -> dict[str, object]:
        """The settings that change what the model answers (part of `model_version`)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            # a new key only when sent, so ModelScope/DashScope projects keep their versions
            **({"repeat_penalty": rp} if (rp := self.sent_repeat_penalty()) is not None else {}),
            **({"extend_lists": self.extend_below} if self.extends_lists else {}),
            "max_input_chars": self.max_input_chars,
            # a pool and packing change who answers and how: new keys only when used, so old versions stay
            **({"fallback_models": list(self.fallback_models)} if self.fallback_models else {}),
            **({"tasks_per_call": self.tasks_per_call} if self.tasks_per_call not in (None, 1) else {}),
        }


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    key = env.get("MODELSCOPE_API_KEY", "").strip() or None
    return Settings(
        api_key=key,
        base_url=normalize_base_url(env.get("MODELSCOPE_API_URL", "") or DEFAULT_API_URL),
        model=env.get("MODELSCOPE_MODEL", "").strip() or DEFAULT_MODEL,
        temperature=_float(env, "LLM_TEMPERATURE", 0.1) or 0.0,
        max_tokens=_int(env, "LLM_MAX_TOKENS", 1024, minimum=0),
        top_p=_float(env, "LLM_TOP_P", None),
        timeout=_float(env, "LLM_TIMEOUT", 60.0, minimum=0.0) or 60.0,
        max_retries=_int(env, "LLM_MAX_RETRIES", 2, minimum=0),
        max_input_chars=_int(env, "MAX_INPUT_CHARS", 4000, minimum=0),
        debug=_bool(env, "DEBUG") or env.get("LOG_LEVEL", "").strip().upper() == "DEBUG",
        log_dir=Path(env.get("LOG_DIR", "").strip() or BACKEND_DIR.parent / "logs"),
        data_dir=Path(env.get("DATA_DIR", "").strip() or BACKEND_DIR / "data"),
        concurrency=max(1, _int(env, "LLM_CONCURRENCY", 1)),
        batch_deadline=max(1.0, (_float(env, "ML_TIMEOUT_PREDICT", 100.0) or 100.0) - 10.0),
        output_mode=_choice(env, "LLM_OUTPUT_MODE", ("auto", "json_schema", "json_object", "text")),
        logprobs=_optional_bool(env, "LLM_LOGPROBS"),
        repeat_penalty=_repeat_penalty(env),
        extend_below=_extend_below(env),
        basic_auth_user=env.get("BASIC_AUTH_USER", "").strip() or None,
        basic_auth_pass=env.get("BASIC_AUTH_PASS", "") or None,
        cache_enabled=env.get("LLM_CACHE", "").strip().lower() not in ("off", "0", "false", "no", "none", "disabled"),
        redis_url=env.get("REDIS_URL", "").strip() or None,
        cache_ttl=max(0.0, _float(env, "LLM_CACHE_TTL_DAYS", 30.0) or 0.0) * 86400.0,
        cache_max_entries=max(0, _int(env, "LLM_CACHE_MAX_ENTRIES", 100_000)),
        fewshot_k=3 if _fewshot_auto(env) else max(0, _int(env, "FEWSHOT_EXAMPLES", 3)),
        fewshot_auto=_fewshot_auto(env),
        fewshot_form=_choice(env, "FEWSHOT_FORM", ("block", "chat", "labels")),
        fewshot_eval_calls=max(0, _int(env, "FEWSHOT_EVAL_CALLS", 60)),
        fewshot_max_chars=max(0, _int(env, "FEWSHOT_MAX_CHARS", 1500)),
        instructions=_instructions(env),
        output_language=env.get("LLM_OUTPUT_LANGUAGE", "").strip(),
        reasoning=_bool(env, "LLM_REASONING"),
        label_studio_url=env.get("LABEL_STUDIO_URL", "").strip().rstrip("/") or None,
        label_studio_api_key=env.get("LABEL_STUDIO_API_KEY", "").strip() or None,
        max_request_bytes=max(1, int((_float(env, "MAX_REQUEST_MB", 100.0) or 100.0) * 1024 * 1024)),
        max_config_chars=max(1000, _int(env, "MAX_CONFIG_CHARS", 1_000_000)),
        model_cache_chars=max(1000, _int(env, "MODEL_CACHE_CHARS", 4_000_000)),
        max_instructions_chars=max(0, _int(env, "MAX_INSTRUCTIONS_CHARS", 20_000)),
        predict_slots=_int(env, "PREDICT_SLOTS", 0, minimum=0) or None,
        slot_lease=max(1.0, _float(env, "LLM_SLOT_LEASE", 15.0) or 15.0),
        fallback_models=_fallback_models(env),
        tasks_per_call=_tasks_per_call(env),
        pack_token_budget=max(100, _int(env, "LLM_PACK_TOKENS", 1500)),
        quota_reset=env.get("LLM_QUOTA_RESET", "").strip() or "00:00 Asia/Shanghai",
    )


def _fewshot_auto(env: Mapping[str, str]) -> bool:
    """FEWSHOT_EXAMPLES unset or `auto`: the backend measures per project whether examples help."""
    return env.get("FEWSHOT_EXAMPLES", "").strip().lower() in ("", "auto")


# Models reported as served by ModelScope API-Inference in 2026 (issue 14): the default pool
# after MODELSCOPE_MODEL, on ModelScope only. The seed's default model was reported withdrawn.
SERVED_MODELS_2026 = (
    "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "ZhipuAI/GLM-4.6",
)


def _fallback_models(env: Mapping[str, str]) -> tuple[str, ...]:
    """MODELSCOPE_FALLBACK_MODELS (comma list; "none" for none); unset: the served list, on ModelScope only."""
    raw = env.get("MODELSCOPE_FALLBACK_MODELS")
    if raw is None or not raw.strip():
        on_modelscope = "modelscope.cn" in (env.get("MODELSCOPE_API_URL", "") or DEFAULT_API_URL)
        raw = ",".join(SERVED_MODELS_2026) if on_modelscope else ""
    if raw.strip().lower() in ("none", "off", "0"):
        return ()
    main = env.get("MODELSCOPE_MODEL", "").strip() or DEFAULT_MODEL
    models = [m.strip() for m in raw.split(",") if m.strip() and m.strip() != main]
    return tuple(dict.fromkeys(models))


def _tasks_per_call(env: Mapping[str, str]) -> int | None:
    raw = env.get("LLM_TASKS_PER_CALL", "").strip().lower()
    if not raw:
        return None
    if raw == "auto":
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"LLM_TASKS_PER_CALL 只能是 auto 或正整数 (must be auto or a positive integer), got {raw!r}")
    return int(raw)


def _instructions(env: Mapping[str, str]) -> str:
    """LLM_INSTRUCTIONS, then the PROMPT_FILE's text (a file is easier for long, multi-line rules)."""
    parts = [env.get("LLM_INSTRUCTIONS", "").strip()]
    if path := env.get("PROMPT_FILE", "").strip():
        try:
            parts.append(Path(path).expanduser().read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ValueError(f"无法读取 PROMPT_FILE (cannot read PROMPT_FILE) {path}: {exc.strerror}") from None
    return "\n".join(p for p in parts if p)
