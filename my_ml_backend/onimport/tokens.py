"""Label Studio API keys as Label Studio 1.23 issues them, and one clear error when one is refused.

Account & Settings shows a Personal Access Token by default: a JWT *refresh* token that
is exchanged for a short-lived access token at `/api/token/refresh/` and sent as
`Bearer`. The legacy token (an opaque hex string, when the organization enables it) is
sent as `Token`. label-studio-sdk 2.1.2 already tells them apart and refreshes access
tokens itself (`tokens.client_ext.TokensClientExt`), so this module only names the kind
of a key and turns the SDK's refusal (at construction for an expired JWT, later as a
401) into a message that says which kind of key was refused and what to do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jwt
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

LEGACY = "legacy token"
PERSONAL = "Personal Access Token (JWT refresh token)"
ACCESS = "JWT access token"


class LabelStudioKeyError(RuntimeError):
    """Label Studio refused the key; the message names the kind of key it looked like."""


def _claims(token: str) -> dict[str, Any] | None:
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None


def token_kind(token: str) -> str:
    """LEGACY, PERSONAL or ACCESS, read from the token itself (no request)."""
    claims = _claims(token)
    if claims is None:
        return LEGACY
    return ACCESS if claims.get("token_type") == "access" else PERSONAL


def expired(token: str, now: datetime | None = None) -> bool:
    """A JWT whose `exp` has passed (a legacy token never expires)."""
    claims = _claims(token) or {}
    exp = claims.get("exp")
    return isinstance(exp, int | float) and datetime.fromtimestamp(exp, UTC) < (now or datetime.now(UTC))


def refusal(token: str, detail: object = "") -> LabelStudioKeyError:
    """The error for a key Label Studio (or the SDK, for an expired JWT) refused."""
    kind = token_kind(token)
    if kind == LEGACY:
        hint = ("该 legacy token 无效，或组织已关闭 legacy token；可改用 Account & Settings 中的 Personal Access Token "
                "(the legacy token was refused: wrong, or legacy tokens are disabled in the organization; "
                "a Personal Access Token from Account & Settings works too)")
    elif expired(token):
        hint = ("该 Personal Access Token 已过期，请在 Account & Settings 中重新生成 "
                "(the Personal Access Token has expired: create a new one in Account & Settings)")
    else:
        hint = ("该 JWT 被拒绝：已撤销、属于另一个 Label Studio，或组织关闭了 Personal Access Token "
                f"(this {kind} was refused: revoked, from another Label Studio, or personal tokens are disabled)")
    return LabelStudioKeyError(f"LABEL_STUDIO_API_KEY ({kind}): {hint}" + (f"; {detail}" if detail else ""))


def connect(url: str, token: str) -> LabelStudio:
    """An SDK client for `url` with `token` (either kind); raises `LabelStudioKeyError` for an expired JWT."""
    try:
        return LabelStudio(base_url=url.rstrip("/"), api_key=token)
    except ApiError as exc:  # the SDK checks a JWT's expiry when it is built
        raise refusal(token, _detail(exc)) from None


def explain(exc: BaseException, token: str) -> BaseException:
    """`exc` as the key error when it is Label Studio refusing the key (401), else `exc` itself."""
    if isinstance(exc, ApiError) and exc.status_code == 401:
        return refusal(token, _detail(exc))
    return exc


def _detail(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("detail") or "")[:200]
