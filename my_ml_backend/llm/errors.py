"""Turn API failures into messages a labelling team can act on (Chinese first, English after).

ModelScope API-Inference reports most problems as an HTTP status plus a short English
text; the same status can mean different things (a 401 can be a bad token or an
unbound Alibaba Cloud account, a 429 can be throttling or an exhausted daily quota).
`classify()` reads both and returns one `PredictionError` whose `message` is what the
user sees and whose `fatal` flag tells the batch loop to stop spending calls.
"""

from __future__ import annotations

import json
from enum import StrEnum

import openai

QUOTA_HEADERS = ("modelscope-ratelimit-requests-remaining", "modelscope-ratelimit-model-requests-remaining")


class ErrorKind(StrEnum):
    MISSING_KEY = "missing_key"
    AUTH = "auth"
    PERMISSION = "permission"
    MODEL_UNAVAILABLE = "model_unavailable"
    QUOTA = "quota"
    THROTTLED = "throttled"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER = "server"
    BAD_RESPONSE = "bad_response"
    BAD_REQUEST = "bad_request"
    NO_TEXT = "no_text"
    DEADLINE = "deadline"
    UNKNOWN = "unknown"


# Kinds that would fail identically for every other task of the batch: stop calling.
FATAL_KINDS = frozenset(
    {ErrorKind.MISSING_KEY, ErrorKind.AUTH, ErrorKind.PERMISSION, ErrorKind.MODEL_UNAVAILABLE, ErrorKind.QUOTA}
)


# Kinds that belong to the task, not the endpoint: a task without text, or one the endpoint refuses (too long,
# content filter). A run of them says nothing about the next tasks (`jobs.batch` does not stop on them).
TASK_KINDS = frozenset({ErrorKind.NO_TEXT, ErrorKind.BAD_REQUEST})


class PredictionError(Exception):
    """A failure of one task's prediction, with the message shown to the user."""

    def __init__(self, kind: ErrorKind, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL_KINDS

    def __str__(self) -> str:
        return f"{self.message} [{self.detail}]" if self.detail else self.message


def missing_key() -> PredictionError:
    return PredictionError(
        ErrorKind.MISSING_KEY,
        "❌ API Key未设置，请设置环境变量 MODELSCOPE_API_KEY (API key not set: set MODELSCOPE_API_KEY)",
    )


def no_text(keys: list[str]) -> PredictionError:
    wanted = ", ".join(f"${k}" for k in keys) or "?"
    return PredictionError(
        ErrorKind.NO_TEXT,
        f"未找到文本内容 (no text found): 任务数据中没有 {wanted} (task data has no {wanted})",
    )


def deadline_reached() -> PredictionError:
    return PredictionError(
        ErrorKind.DEADLINE,
        "⏱ 本批次接近 Label Studio 的预测时限，此任务未完成；再次点击 Retrieve predictions 即可继续 "
        "(batch deadline reached before this task finished: retrieve predictions again to continue)",
    )


def unexpected_error() -> PredictionError:
    return PredictionError(ErrorKind.UNKNOWN, "❌ 预测时发生内部错误，详见后端日志 (internal error, see the log)")


def bad_response(detail: str = "") -> PredictionError:
    return PredictionError(
        ErrorKind.BAD_RESPONSE,
        "⚠️ 响应格式异常：模型返回了空的或无法解析的内容 (malformed response: empty or unparsable reply)",
        detail,
    )


# How ModelScope and other OpenAI-compatible servers say "no such model".
_MODEL_MARKERS = ("has no provider", "invalid model", "model not found", "model_not_found", "does not exist")


def server_message(exc: openai.APIStatusError) -> str:
    """The server's own error text, whether it sits under `error`, `errors` or `message`."""
    body = exc.body
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return body[:300]
    if isinstance(body, dict):
        inner = body.get("error") or body.get("errors") or body
        if isinstance(inner, list) and inner:
            inner = inner[0]
        if isinstance(inner, dict):
            text = inner.get("message") or inner.get("msg") or inner.get("Message") or ""
            if text:
                return str(text)[:300]
        elif isinstance(inner, str):
            return inner[:300]
    return (exc.response.text if exc.response is not None else str(exc))[:300]


def is_quota_exhausted(status: int, text: str, headers: object) -> bool:
    """True for ModelScope's daily-quota answers, which must never be retried."""
    if status != 429:
        return False
    if "quota" in text.lower():
        return True
    getter = getattr(headers, "get", None)
    return bool(getter) and any(str(getter(h, "")).strip() == "0" for h in QUOTA_HEADERS)


def is_thinking_refusal(exc: BaseException) -> bool:
    """Qwen3 thinking models refuse non-streamed calls unless `enable_thinking` is false."""
    return isinstance(exc, openai.BadRequestError) and "enable thinking" in server_message(exc).lower()


def classify(exc: BaseException, *, model: str, base_url: str, timeout: float) -> PredictionError:
    """Map any exception raised while calling the API to a `PredictionError`."""
    if isinstance(exc, PredictionError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return PredictionError(
            ErrorKind.TIMEOUT,
            f"❌ 请求超时（{timeout:g}秒），请稍后重试或增大 LLM_TIMEOUT (request timed out after {timeout:g}s)",
        )
    if isinstance(exc, openai.APIConnectionError):
        return PredictionError(
            ErrorKind.CONNECTION,
            f"❌ 网络连接失败，请检查 MODELSCOPE_API_URL ({base_url}) 和网络 (connection to the API failed)",
            type(exc.__cause__).__name__ if exc.__cause__ else "",
        )
    if isinstance(exc, openai.APIStatusError):
        return _classify_status(exc, model)
    if isinstance(exc, (openai.APIResponseValidationError, ValueError)):
        return bad_response(type(exc).__name__)
    return PredictionError(ErrorKind.UNKNOWN, f"❌ 预测失败 (prediction failed): {type(exc).__name__}")


def _classify_status(exc: openai.APIStatusError, model: str) -> PredictionError:
    status = exc.status_code
    text = server_message(exc)
    lowered = text.lower()
    detail = f"HTTP {status}: {text}"
    if "bind" in lowered and "alibaba" in lowered or status == 403:
        return PredictionError(
            ErrorKind.PERMISSION,
            "❌ 无权限访问此模型：请先在 ModelScope 账号设置中绑定阿里云账号后再使用 API-Inference "
            "(permission denied: bind your Alibaba Cloud account in your ModelScope account settings)",
            detail,
        )
    if status == 401:
        return PredictionError(
            ErrorKind.AUTH,
            "❌ API认证失败，请检查API Key (MODELSCOPE_API_KEY) 是否正确 (authentication failed: check your API key)",
            detail,
        )
    if is_quota_exhausted(status, text, exc.response.headers if exc.response is not None else {}):
        return PredictionError(
            ErrorKind.QUOTA,
            "❌ API调用配额已用完，请明天再试或更换API Key (API quota used up: try tomorrow or use another key)",
            detail,
        )
    if status == 429:
        return PredictionError(
            ErrorKind.THROTTLED,
            "❌ 请求过于频繁，重试后仍被限流，请稍后再试 (rate limited, still throttled after retries)",
            detail,
        )
    if status == 404 or any(marker in lowered for marker in _MODEL_MARKERS):
        return PredictionError(
            ErrorKind.MODEL_UNAVAILABLE,
            f"❌ 模型不可用：{model}，请检查 MODELSCOPE_MODEL 是否为 API-Inference 支持的模型 "
            f"(model not available: {model})",
            detail,
        )
    if status >= 500 and ("response_format" in lowered or "repeat_penalty" in lowered):
        # A 500 carrying a validation error about a field we sent: a refusal of this request, not an outage.
        return PredictionError(ErrorKind.BAD_REQUEST, f"❌ 请求被拒绝 (request rejected, HTTP {status})", detail)
    if status >= 500:
        return PredictionError(
            ErrorKind.SERVER,
            f"❌ 模型服务端错误 (HTTP {status})，重试后仍失败，请稍后再试 (server error, failed after retries)",
            detail,
        )
    return PredictionError(ErrorKind.BAD_REQUEST, f"❌ 请求被拒绝 (request rejected, HTTP {status})", detail)


class Failure(StrEnum):
    """What a failed request says about sending the same request again."""

    QUOTA = "quota"  # a 429 saying the quota is spent: no wait brings it back today
    THROTTLE = "throttle"  # a 429 asking to slow down: the same request succeeds later
    OUTAGE = "outage"  # a server fault, a timeout, a dropped connection: may pass
    FINAL = "final"  # anything else: the same request would fail the same way


def failure_of(exc: BaseException) -> Failure:
    """Quota spent vs throttled vs outage, read from the status, the text and ModelScope's rate-limit headers."""
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return Failure.OUTAGE
    if not isinstance(exc, openai.APIStatusError):
        return Failure.FINAL
    status = exc.status_code
    if status == 429:
        quota = is_quota_exhausted(429, exc.response.text, exc.response.headers)
        return Failure.QUOTA if quota else Failure.THROTTLE
    if status in (408, 409):
        return Failure.OUTAGE
    # A 5xx that carries a request-validation error is a refusal (llama-cpp-python), not an outage.
    if status >= 500 and _classify_status(exc, "").kind is ErrorKind.SERVER:
        return Failure.OUTAGE
    return Failure.FINAL
