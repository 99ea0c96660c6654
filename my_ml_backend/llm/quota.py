"""The quota ledger: what is left of today's free-tier calls, per model and per account.

ModelScope API-Inference's free tier caps calls per account and per model, and says how
many are left in the `modelscope-ratelimit-*` headers of every answer; over a cap it answers
429, and a retired model answers 404/400. None of it is documented well enough to hard-code,
so the ledger learns it from the answers and refusals and keeps it where every worker and
replica sees it (`quota_stores`: SQLite in `DATA_DIR`, or Redis when `REDIS_URL` is set).
It survives restarts, and forgets everything when the quota day rolls over (`quota_clock`).

It also keeps, per model and for all time, what answers cost (characters sent, tokens
paid, seconds): `batch_predict.py --dry-run` estimates a run from these.

A ledger that cannot be read or written (disk full, Redis down) costs a warning and is
treated as knowing nothing: calls go ahead and the endpoint itself refuses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..settings import Settings, reveal
from ..storage.fallback import CLEAR, READ, WRITE, StoreFailures, open_once
from .errors import ErrorKind, PredictionError
from .quota_clock import DayClock
from .quota_stores import SQLITE_FILE, Cost, LedgerStore, MemoryLedger, Quota, RedisLedger, SQLiteLedger

__all__ = [  # the ledger's records, clock and in-memory store are used through this module
    "ACCOUNT", "QUOTA", "RETIRED", "Cost", "DayClock", "MemoryLedger", "Quota", "QuotaLedger", "account_id",
    "header_int", "open_ledger", "quota_used_up",
]

ACCOUNT = "*"  # the scope of the account-wide cap; other scopes are model ids
RETIRED = "retired"  # out reasons; a cap that reached 0 is "quota"
QUOTA = "quota"

ACCOUNT_LIMIT = "modelscope-ratelimit-requests-limit"
ACCOUNT_REMAINING = "modelscope-ratelimit-requests-remaining"
MODEL_LIMIT = "modelscope-ratelimit-model-requests-limit"
MODEL_REMAINING = "modelscope-ratelimit-model-requests-remaining"

_FAILURES = (("额度账本", "quota ledger"), ("视为未知", "treated as unknown"))
_OPENING = (("额度账本", "quota ledger"), ("仅在本进程内记录", "kept in this process only"))


def header_int(value: Any) -> int | None:
    """A rate-limit header's number (negative ones included), None when absent or not a number."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text.lstrip("-").isdigit() else None


class QuotaLedger:
    """Today's quota of one account (API key at one endpoint), learnt from answers and refusals."""

    def __init__(self, store: LedgerStore, clock: DayClock, account: str) -> None:
        self.store = store
        self.clock = clock
        self.account = account
        self.failures = StoreFailures(*_FAILURES)

    def _today(self, sent_day: str | None) -> str | None:
        """The quota day to book an answer to: today's, or None when it was sent in a day that has ended since
        (its "remaining: 0" is yesterday's and must not close the new day)."""
        day = self.clock.day()
        return day if sent_day in (None, day) else None

    def observe(self, model: str, headers: Any, sent_day: str | None = None) -> None:
        """Record the quota headers of one answer (or refusal) from `model`, sent in quota day `sent_day`."""
        get = getattr(headers, "get", None)
        if get is None or (day := self._today(sent_day)) is None:
            return
        values = {h: header_int(get(h)) for h in (ACCOUNT_LIMIT, ACCOUNT_REMAINING, MODEL_LIMIT, MODEL_REMAINING)}
        if not any(v is not None for v in values.values()):
            return
        if values[ACCOUNT_LIMIT] is not None or values[ACCOUNT_REMAINING] is not None:
            self.failures.guard(WRITE, lambda: self.store.update(
                self.account, day, ACCOUNT, values[ACCOUNT_LIMIT], values[ACCOUNT_REMAINING], ""))
        if values[MODEL_LIMIT] is not None or values[MODEL_REMAINING] is not None:
            self.failures.guard(WRITE, lambda: self.store.update(
                self.account, day, model, values[MODEL_LIMIT], values[MODEL_REMAINING], ""))

    def mark_out(self, scope: str, reason: str, sent_day: str | None = None) -> None:
        """No call may be spent on `scope` (a model, or `ACCOUNT`) until the quota day ends."""
        if (day := self._today(sent_day)) is None:
            return
        self.failures.guard(WRITE, lambda: self.store.update(self.account, day, scope, None, None, reason))

    def today(self) -> dict[str, Quota]:
        """Everything known about today, by scope."""
        return self.failures.guard(READ, lambda: self.store.read(self.account, self.clock.day()), {})

    def add_cost(self, model: str, cost: Cost) -> None:
        self.failures.guard(WRITE, lambda: self.store.add_cost(self.account, model, cost))

    def costs(self) -> dict[str, Cost]:
        return self.failures.guard(READ, lambda: self.store.costs(self.account), {})

    def clear(self) -> None:
        """Forget today's refusals and counts (after a plan upgrade, or between tests)."""
        self.failures.guard(CLEAR, lambda: self.store.clear(self.account))


def quota_used_up(clock: DayClock, models: list[str]) -> PredictionError:
    """The error of a task that no model may answer today: said at once, without a call."""
    hhmm, full = clock.describe_reset()
    return PredictionError(
        ErrorKind.QUOTA,
        f"❌ 今日额度已用完（{', '.join(models)}），将于 {hhmm} 恢复；届时再次预测即可继续，或配置 "
        f"MODELSCOPE_FALLBACK_MODELS / 更换 API Key (daily quota used up; resets at {full})",
    )


def account_id(settings: Settings) -> str:
    """Which account a ledger entry belongs to: a digest of endpoint and key (the key never stored)."""
    raw = f"{settings.base_url.rstrip('/')}\n{reveal(settings.api_key)}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def open_ledger(settings: Settings) -> QuotaLedger:
    """The ledger of `settings`' account: Redis when `REDIS_URL` is set, else SQLite in `DATA_DIR`."""
    clock = DayClock(settings.quota_reset)
    if settings.redis_url:
        url = settings.redis_url
        store = open_once(("quota ledger", url), lambda: RedisLedger(url), MemoryLedger, *_OPENING)
    else:
        path = Path(settings.data_dir) / SQLITE_FILE
        store = open_once(("quota ledger", str(path)), lambda: SQLiteLedger(path), MemoryLedger, *_OPENING)
    return QuotaLedger(store, clock, account_id(settings))
