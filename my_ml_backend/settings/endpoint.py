"""The endpoint profile: every assumption about an endpoint that is made from its URL alone.

ModelScope and DashScope are metered (each call spends a daily quota), return no logprobs,
answer a `json_schema` response format with an empty 200, and keep their own decoding
defaults; a local or self-hosted OpenAI-compatible server costs nothing per call and is
asked for the most (a refused feature is dropped once, `llm.client`). Nothing else in
the package tests the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlparse

DEFAULT_API_URL = "https://api-inference.modelscope.cn/v1"
DEFAULT_MODEL = "Qwen/Qwen3-Coder-480B-A35B-Instruct"

# Models ModelScope API-Inference serves: tried in order after MODELSCOPE_MODEL when no pool is set.
SERVED_MODELS_2026 = (
    "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "ZhipuAI/GLM-4.6",
)


@dataclass(frozen=True)
class EndpointProfile:
    """What the backend assumes of an endpoint before it has answered (each `auto` setting's value)."""

    name: str
    metered: bool  # every call spends quota, so no call is spent on a feature it is known to refuse
    output_mode: str  # LLM_OUTPUT_MODE=auto: the `response_format` tried first (`llm.output_modes`)
    logprobs: bool  # LLM_LOGPROBS=auto: whether token logprobs are asked for
    repeat_penalty: float | None  # LLM_REPEAT_PENALTY=auto: the value sent (None: not sent)
    model_pool: tuple[str, ...]  # MODELSCOPE_FALLBACK_MODELS unset: the models tried after MODELSCOPE_MODEL
    tasks_per_call: int  # LLM_TASKS_PER_CALL unset: one task per call (packing is opt-in everywhere)


MODELSCOPE = EndpointProfile(
    "ModelScope API-Inference", metered=True, output_mode="json_object", logprobs=False, repeat_penalty=None,
    model_pool=SERVED_MODELS_2026, tasks_per_call=1,
)
ALIBABA_CLOUD = EndpointProfile(  # DashScope and ModelScope's international site: ModelScope's quirks, other models
    "DashScope / ModelScope (international)", metered=True, output_mode="json_object", logprobs=False,
    repeat_penalty=None, model_pool=(), tasks_per_call=1,
)
# 1.0 (no penalty): llama-cpp-python's server defaults to 1.1, which stops structured lists early.
OPENAI_COMPATIBLE = EndpointProfile(
    "OpenAI-compatible", metered=False, output_mode="json_schema", logprobs=True, repeat_penalty=1.0,
    model_pool=(), tasks_per_call=1,
)

_HOSTS = (("modelscope.cn", MODELSCOPE), ("modelscope.ai", ALIBABA_CLOUD), ("aliyuncs.com", ALIBABA_CLOUD))


@lru_cache(maxsize=64)
def endpoint_profile(base_url: str) -> EndpointProfile:
    """The profile of the endpoint at `base_url`, from its host name (the domain or a subdomain of it)."""
    host = (urlparse(base_url).hostname or "").lower()
    for domain, profile in _HOSTS:
        if host == domain or host.endswith("." + domain):
            return profile
    return OPENAI_COMPATIBLE


def normalize_base_url(url: str) -> str:
    """Accept both `…/v1` and the `…/v1/chat/completions` users copy from docs (the client appends the path)."""
    url = url.strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)].rstrip("/")
    return url
