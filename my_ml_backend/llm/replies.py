"""A completion as the rest of the backend reads it: its text, usage and token logprobs, and its cached form.

Kept apart from `client` (which makes the call) so that what a reply may hold, and what of an
endpoint's reply is trusted, reads in one place.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cache import CachedAnswer, Token

logger = logging.getLogger(__name__)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ChatReply:
    """What the rest of the backend needs from a completion."""

    text: str
    usage: Usage = field(default_factory=Usage)
    # (token, logprob, alternatives) of the answer, when the endpoint returned logprobs;
    # alternatives: the top (token, logprob) pairs at that position (`labeling.calibration`).
    tokens: list[Token] = field(default_factory=list)
    quota_remaining: int | None = None
    mode: str = "text"
    cached: bool = False  # served from the response cache: no request, no tokens paid
    model: str = ""  # the pool model that answered ("" when served from the cache)
    truncated: bool = False  # cut at max_tokens (finish_reason "length"): only its complete items are read

    @classmethod
    def from_cache_entry(cls, entry: CachedAnswer) -> ChatReply:
        """The reply a cache entry stands for (no request was sent for it, no token paid)."""
        usage = Usage(entry.prompt_tokens, entry.completion_tokens)
        return cls(text=entry.text, usage=usage, tokens=list(entry.tokens), mode=entry.mode, cached=True)

    def cache_entry(self) -> CachedAnswer:
        """What the response cache keeps of this reply: what it said and cost, not who answered it."""
        usage = self.usage
        return CachedAnswer(self.text, usage.prompt_tokens, usage.completion_tokens, tuple(self.tokens), self.mode)


def worth_keeping(accept: Callable[[ChatReply], bool] | None, reply: ChatReply) -> bool:
    """`accept(reply)`, the caller's check that a reply is worth caching; no check: kept.

    A failure inside the check is our bug, not the endpoint's refusal: it must not be
    read as one (that stepped the output mode down for every project), so it means
    "not kept" and is logged.
    """
    if accept is None:
        return True
    try:
        return bool(accept(reply))
    except Exception:  # noqa: BLE001 - the reply is still answered; only caching is skipped
        logger.exception("检查回复时出错，不缓存 (checking a reply failed: not cached)")
        return False


def reply_tokens(choice: Any) -> list[Token]:
    """The reply's tokens with their logprobs and alternatives; none when any logprob is not a number.

    A NaN or infinite logprob makes every score of the reply meaningless: the reply is then read
    as one without logprobs. A positive one (some servers mark a missing logprob with 1.0) is 0.
    """
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    tokens = [
        (t.token, t.logprob, tuple((a.token, a.logprob) for a in getattr(t, "top_logprobs", None) or ()))
        for t in content
        if getattr(t, "logprob", None) is not None
    ]
    numbers = [x for _, lp, alternatives in tokens for x in (lp, *(a[1] for a in alternatives))]
    if not all(isinstance(lp, (int, float)) and math.isfinite(lp) for lp in numbers):
        logger.warning("端点返回的 logprobs 不是有效数字，本次不用 (non-finite logprobs: ignored for this reply)")
        return []
    return [(text, min(lp, 0.0), tuple((a, min(alp, 0.0)) for a, alp in alternatives))
            for text, lp, alternatives in tokens]

