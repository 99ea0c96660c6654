"""The backend's configuration: one immutable `Settings`, built once per process by `load_settings`.

Entry points (`_wsgi.py`, the command lines, the RQ worker) call `load_settings()` once and pass
the result down; nothing else reads the environment. A changed copy is `settings.with_changes(...)`.
Secrets are `SecretStr` (never printed by accident); `reveal` gives the value where it must be sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.dataclasses import dataclass

from .endpoint import DEFAULT_API_URL, DEFAULT_MODEL, EndpointProfile, endpoint_profile, normalize_base_url
from .environment import PACKAGE_DIR, Environment, SettingsError, read_environment

# LLM_EXTEND_LISTS=auto: a list answer whose P(complete) is under this is asked to go on (`labeling.extension`).
EXTEND_BELOW = 0.9
# LLM_SCORE=auto without logprobs, and LLM_SCORE_CALLS: the method and budget that measured best per call
# (docs/decisions.md, "the review score without logprobs")
SCORE_WITHOUT_LOGPROBS = "agreement"
SCORE_CALLS = 0  # no extra call until a measurement on this project's sets says one pays (bench/score_study.py)


def reveal(secret: SecretStr | None) -> str:
    """A secret setting's value ("" when unset), for the one call that must send it."""
    return secret.get_secret_value() if secret is not None else ""


@dataclass(frozen=True)
class Settings:
    """Immutable backend configuration; see README for each environment variable."""

    api_key: SecretStr | None = None  # MODELSCOPE_API_KEY
    base_url: str = DEFAULT_API_URL
    model: str = DEFAULT_MODEL
    temperature: float = 0.1
    max_tokens: int = 1024
    top_p: float | None = None
    timeout: float = 60.0
    max_retries: int = 2
    max_input_chars: int = 4000
    debug: bool = False
    log_dir: Path = PACKAGE_DIR.parent / "logs"
    data_dir: Path = PACKAGE_DIR / "data"
    concurrency: int = 1  # ModelScope's free tier allows about one request at a time
    batch_deadline: float = 90.0  # Label Studio's ML_TIMEOUT_PREDICT (100 s) minus a margin
    output_mode: str = "auto"  # auto | json_schema | json_object | text
    logprobs: bool | None = None  # None: the endpoint profile's
    # None: "auto", the endpoint profile's; 0.0: "off", never sent
    repeat_penalty: float | None = None
    # LLM_EXTEND_LISTS: a list answer whose P(complete) is under this is asked once more, made to go on
    # (`labeling.extension`); 0 = off. Needs logprobs and an endpoint that enforces the schema.
    extend_below: float = EXTEND_BELOW
    basic_auth_user: str | None = None
    basic_auth_pass: SecretStr | None = None
    cache_enabled: bool = True  # LLM_CACHE
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    cache_ttl: float = 30 * 86400.0  # seconds; 0: entries never expire
    cache_max_entries: int = 100_000  # SQLite only; 0: unbounded
    fewshot_k: int = 3  # FEWSHOT_EXAMPLES: annotated examples shown per task; 0 turns few-shot off
    fewshot_auto: bool = True  # FEWSHOT_EXAMPLES=auto: per project, count and form chosen from evidence
    fewshot_form: str = "block"  # FEWSHOT_FORM: style of an explicit count (block | chat | per-label)
    fewshot_eval_calls: int = 60  # FEWSHOT_EVAL_CALLS: calls one auto evaluation may spend; 0: none, no examples
    fewshot_max_chars: int = 1500  # FEWSHOT_MAX_CHARS: prompt budget for them (~1 token per CJK char)
    instructions: str = ""  # LLM_INSTRUCTIONS or the PROMPT_FILE's text: added to every prompt
    output_language: str = ""  # LLM_OUTPUT_LANGUAGE: language of free-text answers
    reasoning: bool = False  # LLM_REASONING=on: the model writes a short reason before its answers
    label_studio_url: str | None = None  # LABEL_STUDIO_URL: lets START_TRAINING re-read annotations
    label_studio_api_key: SecretStr | None = None  # LABEL_STUDIO_API_KEY
    predict_on_import: bool = False  # PREDICT_ON_IMPORT=on: every project's imported tasks are predicted
    backend_public_url: str | None = None  # BACKEND_PUBLIC_URL: the URL Label Studio's webhooks reach us by
    # Bounds on what a client can make the server hold (see README "暴露与安全 / Exposure and security").
    max_request_bytes: int = 100 * 1024 * 1024  # MAX_REQUEST_MB: larger bodies get a 413 before being read
    max_config_chars: int = 1_000_000  # MAX_CONFIG_CHARS: one labeling config
    model_cache_chars: int = 4_000_000  # MODEL_CACHE_CHARS: characters of configs kept parsed per worker
    max_instructions_chars: int = 20_000  # MAX_INSTRUCTIONS_CHARS: a project's ML extra params (instructions)
    predict_slots: int | None = None  # PREDICT_SLOTS: concurrent /predict per worker; None = unbounded
    slot_lease: float = 15.0  # LLM_SLOT_LEASE: seconds a killed process may keep a shared slot (REDIS_URL)
    fallback_models: tuple[str, ...] = ()  # MODELSCOPE_FALLBACK_MODELS: tried in order after `model`
    tasks_per_call: int | None = None  # LLM_TASKS_PER_CALL: N tasks per chat call, 0 = auto, None = endpoint default
    pack_token_budget: int = 1500  # LLM_PACK_TOKENS: prompt tokens of task text per packed call (auto)
    quota_reset: str = "00:00 Asia/Shanghai"  # LLM_QUOTA_RESET: when the free tier's quota day starts
    # LLM_SCORE: how a task's review score is made (`predicting.second_opinions`); auto: logprobs where the
    # endpoint returns them, else SCORE_WITHOUT_LOGPROBS
    score_method: str = "auto"
    score_calls: int = SCORE_CALLS  # LLM_SCORE_CALLS: extra calls per task a second-opinion method may make
    score_majority: bool = False  # LLM_SCORE_MAJORITY: the second opinions' majority replaces the answer
    score_shares: bool = True  # LLM_SCORE_SHARES: without logprobs, a score weighed by its label's share of answers
    min_score: float = 0.0  # LLM_MIN_SCORE (or a project's `min_score`): below it, an empty pre-label
    # LLM_ANSWER_STRATEGY: how a single-choice task is asked (`labeling.free_text`): auto (per project, measured on
    # its annotations; JSON before it has any) | structured (JSON) | free-text (llm_interactive's plain answer)
    answer_strategy: str = "auto"
    answer_eval_calls: int = 80  # ANSWER_EVAL_CALLS: calls the automatic choice may spend (40 tasks, both ways)
    # LLM_RETRY_PLAIN: a JSON answer that names no choice is asked once more the plain way (`predicting.plain_retry`)
    retry_plain: bool = True

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with `changes` (field names), checked like the original; these settings never change."""
        return dataclasses.replace(self, **changes)

    @property
    def endpoint(self) -> EndpointProfile:
        """What the endpoint at `base_url` is assumed to do before it has answered."""
        return endpoint_profile(self.base_url)

    @property
    def has_api_key(self) -> bool:
        return bool(reveal(self.api_key))

    @property
    def keeps_annotations(self) -> bool:
        """Annotations are kept: as examples (automatic choice, or an explicit count above 0), or to choose the
        answer strategy on."""
        return self.fewshot_auto or self.fewshot_k > 0 or self.chooses_answer_strategy

    def sent_repeat_penalty(self) -> float | None:
        """The `repeat_penalty` requests carry, or None (not sent)."""
        if self.repeat_penalty is None:  # auto
            return self.endpoint.repeat_penalty
        return self.repeat_penalty or None  # 0.0: off

    def without_extension(self) -> Settings:
        """These settings with list extension off: what the project's annotations turned it off to, and the
        zero-shot version the few-shot evaluation runs as (`engine`)."""
        return self.with_changes(extend_below=0.0)

    @property
    def wants_logprobs(self) -> bool:
        """LLM_LOGPROBS, or the endpoint profile's."""
        return self.logprobs if self.logprobs is not None else self.endpoint.logprobs

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
            # another score method is another score, which a fitted score map must not be applied to
            **({"score": self.score_fingerprint} if self.score_fingerprint else {}),
            **({"min_score": self.min_score} if self.min_score else {}),
            **({"answer": self.answer_strategy} if self.answers_free_text else {}),
            # the retry gives answers where there were none, so a task left empty is predicted again
            **({"unmatched": "plain"} if self.retries_plain else {}),
        }

    @property
    def retries_plain(self) -> bool:
        """A single-choice JSON answer naming no choice is asked once more the plain way (LLM_RETRY_PLAIN)."""
        return self.retry_plain and not self.answers_free_text

    @property
    def answers_free_text(self) -> bool:
        """Single-choice tasks are asked for a plain answer (LLM_ANSWER_STRATEGY=free-text, set or chosen)."""
        return self.answer_strategy == "free-text"

    @property
    def chooses_answer_strategy(self) -> bool:
        """The answer strategy is measured per project on its annotations (auto, with a budget)."""
        return self.answer_strategy == "auto" and self.answer_eval_calls > 0

    @property
    def evaluates_projects(self) -> bool:
        """A project's annotations are evaluated on Train: for its few-shot form, its answer strategy, or both."""
        return (self.fewshot_auto and self.fewshot_eval_calls > 0) or self.chooses_answer_strategy

    def resolved_score_method(self, logprobs: bool) -> str:
        """LLM_SCORE with `auto` decided: `logprobs` where the endpoint returns them, else the measured default."""
        if self.score_method != "auto":
            return self.score_method
        return "logprobs" if logprobs else SCORE_WITHOUT_LOGPROBS

    def weighs_shares(self, logprobs: bool) -> bool:
        """Scores are weighed by their labels' share of the answers (`predicting.answer_shares`): on endpoints
        without logprobs, unless the score is off."""
        return self.score_shares and not logprobs and self.resolved_score_method(logprobs) != "off"

    @property
    def score_fingerprint(self) -> str:
        """The score method as configured, when it makes extra calls, changes answers or weighs scores, else ""."""
        method = self.resolved_score_method(self.wants_logprobs)
        shares = ":shares" if self.weighs_shares(self.wants_logprobs) else ""
        if method in ("logprobs", "off") or not self.score_calls:
            return shares[1:]
        return f"{method}:{self.score_calls}" + (":majority" if self.score_majority else "") + shares


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of `env` (default: the process environment); SettingsError names each wrong variable.

    Call it once, at a process entry, after `load_env_file()`.
    """
    v = read_environment(env)
    base_url = normalize_base_url(v.modelscope_api_url or DEFAULT_API_URL)
    model = v.modelscope_model or DEFAULT_MODEL
    fewshot_auto = v.fewshot_examples in (None, "auto")
    given: dict[str, Any] = {
        "api_key": v.modelscope_api_key,
        "base_url": base_url,
        "model": model,
        "temperature": v.llm_temperature,
        "max_tokens": v.llm_max_tokens,
        "top_p": v.llm_top_p,
        "timeout": v.llm_timeout,
        "max_retries": v.llm_max_retries,
        "max_input_chars": v.max_input_chars,
        "debug": bool(v.debug) or (v.log_level or "").upper() == "DEBUG",
        "log_dir": v.log_dir,
        "data_dir": v.data_dir,
        "concurrency": v.llm_concurrency,
        # Label Studio gives up at ML_TIMEOUT_PREDICT: the batch ends 10 s before, with what is done
        "batch_deadline": None if v.ml_timeout_predict is None else max(1.0, v.ml_timeout_predict - 10.0),
        "output_mode": v.llm_output_mode,
        "logprobs": None if v.llm_logprobs == "auto" else v.llm_logprobs,
        "repeat_penalty": _number(v.llm_repeat_penalty, {"auto": None, "off": 0.0}),
        "extend_below": _number(v.llm_extend_lists, {"auto": EXTEND_BELOW, "on": EXTEND_BELOW, "off": 0.0}),
        "basic_auth_user": v.basic_auth_user,
        "basic_auth_pass": v.basic_auth_pass,
        "cache_enabled": v.llm_cache,
        "redis_url": v.redis_url,
        "cache_ttl": None if v.llm_cache_ttl_days is None else v.llm_cache_ttl_days * 86400.0,
        "cache_max_entries": v.llm_cache_max_entries,
        "fewshot_k": 3 if fewshot_auto else v.fewshot_examples,
        "fewshot_auto": fewshot_auto,
        "fewshot_form": v.fewshot_form,
        "fewshot_eval_calls": v.fewshot_eval_calls,
        "fewshot_max_chars": v.fewshot_max_chars,
        "instructions": _instructions(v),
        "output_language": v.llm_output_language,
        "reasoning": v.llm_reasoning,
        "label_studio_url": v.label_studio_url.rstrip("/") if v.label_studio_url else None,
        "label_studio_api_key": v.label_studio_api_key,
        "predict_on_import": None if v.predict_on_import is None else v.predict_on_import == "on",
        "backend_public_url": v.backend_public_url.rstrip("/") if v.backend_public_url else None,
        "max_request_bytes": None if v.max_request_mb is None else max(1, int(v.max_request_mb * 1024 * 1024)),
        "max_config_chars": v.max_config_chars,
        "model_cache_chars": v.model_cache_chars,
        "max_instructions_chars": v.max_instructions_chars,
        "predict_slots": v.predict_slots or None,  # 0: unbounded
        "slot_lease": v.llm_slot_lease,
        "fallback_models": _fallback_models(v.modelscope_fallback_models, model, endpoint_profile(base_url)),
        "tasks_per_call": 0 if v.llm_tasks_per_call == "auto" else v.llm_tasks_per_call,
        "pack_token_budget": v.llm_pack_tokens,
        "quota_reset": v.llm_quota_reset,
        "score_method": v.llm_score,
        "score_calls": v.llm_score_calls,
        "score_majority": v.llm_score_majority,
        "score_shares": v.llm_score_shares,
        "min_score": v.llm_min_score,
        "answer_strategy": v.llm_answer_strategy,
        "answer_eval_calls": v.answer_eval_calls,
        "retry_plain": v.llm_retry_plain,
    }
    return Settings(**{name: value for name, value in given.items() if value is not None})


def _number(value: str | float | None, words: dict[str, float | None]) -> float | None:
    """A variable that is a word (`auto`, `off`, ...) or a number, as its number (None: the default)."""
    return words[value] if isinstance(value, str) else value


def _fallback_models(listed: str | None, model: str, endpoint: EndpointProfile) -> tuple[str, ...]:
    """MODELSCOPE_FALLBACK_MODELS (comma list; "none" for none); unset: the endpoint's pool. Never `model`."""
    if listed is None:
        listed = ",".join(endpoint.model_pool)
    if listed.lower() in ("none", "off", "0"):
        return ()
    return tuple(dict.fromkeys(m.strip() for m in listed.split(",") if m.strip() and m.strip() != model))


def _instructions(v: Environment) -> str:
    """LLM_INSTRUCTIONS, then the PROMPT_FILE's text (a file is easier for long, multi-line rules)."""
    parts = [v.llm_instructions or ""]
    if v.prompt_file is not None:
        try:
            parts.append(v.prompt_file.expanduser().read_text(encoding="utf-8").strip())
        except OSError as exc:
            message = f"无法读取 PROMPT_FILE (cannot read PROMPT_FILE) {v.prompt_file}: {exc.strerror}"
            raise SettingsError(message) from None
    return "\n".join(p for p in parts if p)
