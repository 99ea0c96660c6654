"""The model pool: `MODELSCOPE_MODEL`, then `MODELSCOPE_FALLBACK_MODELS`, in order.

On ModelScope's free tier a model stops answering for the day when its cap is used up
(429, or its `…model-requests-remaining` header at 0) or for good when it is retired
(404, or 400 "has no provider supported"). The pool asks the quota ledger before each
call and sends it to the first model not known to be out; the account-wide header at
0 stops every model. No call is spent on a model known to be out; only requests
already in flight may still meet a refusal, which moves the task to the next model.
When no model is left, each task fails at once, without a call, saying when the
quota comes back.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import openai

from ..settings import Settings
from ..telemetry.metrics import METRICS, Labels
from .errors import ErrorKind, PredictionError, classify
from .quota import ACCOUNT, ACCOUNT_REMAINING, QUOTA, RETIRED, Quota, QuotaLedger, header_int, quota_used_up

logger = logging.getLogger(__name__)

MODEL_ANSWERS = "model_answers"  # labelled counters of telemetry.metrics, by model
MODEL_REFUSALS = "model_refusals"


def pool_models(settings: Settings) -> tuple[str, ...]:
    """The pool's models in the order they are tried."""
    return tuple(dict.fromkeys([settings.model, *settings.fallback_models]))


class ModelPool:
    """Picks the model of each call from the ledger; learns from every answer and refusal."""

    def __init__(self, models: Sequence[str], ledger: QuotaLedger) -> None:
        self.models = tuple(models)
        self.ledger = ledger
        self._last = self.models[0]  # the model that answered last: a change is logged once
        _POOLS.append(weakref.ref(self))

    @property
    def cache_name(self) -> str:
        """What stands for the model in response-cache keys: the pool, since any of its models may answer."""
        return self.models[0] if len(self.models) == 1 else "pool:" + ",".join(self.models)

    def status(self) -> list[Quota]:
        """Today's quota of each model (`ACCOUNT` first when known), from the ledger."""
        today = self.ledger.today()
        scopes = ([ACCOUNT] if ACCOUNT in today else []) + list(self.models)
        return [today.get(scope, Quota(scope)) for scope in scopes]

    def usable(self) -> list[str]:
        """The models a call may be sent to now, in pool order."""
        today = self.ledger.today()
        if today.get(ACCOUNT, Quota(ACCOUNT)).exhausted:
            return []
        return [m for m in self.models if not today.get(m, Quota(m)).exhausted]

    def pick(self) -> str:
        """The model for the next call; raises the "nothing left today" error when there is none."""
        usable = self.usable()
        if not usable:
            raise self.exhausted_error()
        return usable[0]

    def exhausted_error(self) -> PredictionError:
        today = self.ledger.today()
        if all(today.get(m, Quota(m)).out == RETIRED for m in self.models):
            names = ", ".join(self.models)
            return PredictionError(
                ErrorKind.MODEL_UNAVAILABLE,
                f"❌ 模型不可用：{names}，请检查 MODELSCOPE_MODEL / MODELSCOPE_FALLBACK_MODELS 是否为 API-Inference "
                f"支持的模型 (model not available: {names})",
            )
        return quota_used_up(self.ledger.clock, list(self.models))

    def answered(self, model: str, headers: Any, sent_day: str | None = None) -> None:
        """A successful answer from `model`: count it, and learn its quota headers (`sent_day`: the quota day the
        request was sent in; an answer that arrives after the reset speaks of the day before)."""
        METRICS.inc(MODEL_ANSWERS, model=model)
        self.ledger.observe(model, headers, sent_day)
        if model != self._last:
            self._last = model
            logger.info("现在由模型 %s 回答 (now answered by %s)", model, model)

    def refused(self, model: str, exc: BaseException, sent_day: str | None = None) -> bool:
        """Learn from a failed call to `model`; True when the call should go to the pool's next model.

        A retired model or a used-up cap is marked out for the rest of the quota day;
        other failures (throttling, timeouts, bad requests) say nothing about the quota.
        """
        if not isinstance(exc, openai.APIStatusError):
            return False
        headers = exc.response.headers if exc.response is not None else {}
        self.ledger.observe(model, headers, sent_day)
        kind = classify(exc, model=model, base_url="", timeout=0).kind
        if kind == ErrorKind.MODEL_UNAVAILABLE:
            reason, scope = RETIRED, model
        elif kind == ErrorKind.QUOTA:
            account_left = Quota(ACCOUNT, remaining=header_int(headers.get(ACCOUNT_REMAINING)))
            reason, scope = QUOTA, ACCOUNT if account_left.exhausted else model
        else:
            return False
        METRICS.inc(MODEL_REFUSALS, model=model, reason=reason)
        self.ledger.mark_out(scope, reason, sent_day)
        logger.warning(
            "模型 %s 今日不再使用 (%s)，%s (model %s out for today: %s)",
            "所有模型" if scope == ACCOUNT else model, reason,
            "改用下一个模型" if self.usable() else "没有可用的模型了", model, reason,
        )
        return True


_POOLS: list[weakref.ref[ModelPool]] = []  # in creation order: the newest pool's figures win in /metrics


def _quota_samples() -> Iterable[tuple[Labels, float]]:
    """`/metrics` gauge: today's remaining calls per model (and account) as last reported."""
    seen = set()
    _POOLS[:] = [ref for ref in _POOLS if ref() is not None]
    for pool in [ref() for ref in reversed(_POOLS)]:
        for quota in pool.status() if pool is not None else ():
            scope = "account" if quota.scope == ACCOUNT else quota.scope
            if quota.remaining is None and not quota.out or scope in seen:
                continue
            seen.add(scope)
            yield (("model", scope),), 0 if quota.out else quota.remaining or 0


METRICS.gauge(
    "quota_remaining",
    "Calls left today per model (model=\"account\": the whole account), as the endpoint last reported.",
    _quota_samples,
)
