"""HTTP basic auth, checked on the raw WSGI header before any view, hook or body read (see `guards`).

Label Studio sends the credentials on /health, /setup, /predict and the Train button's
/webhook; its annotation-event webhooks carry only the headers set on the webhook.
"""

from __future__ import annotations

import base64
import binascii
import hmac


def basic_credentials(header: str) -> tuple[bytes, bytes] | None:
    """(user, password) of an `Authorization: Basic …` header, or None; strict on purpose.

    Two headers arrive joined by a comma and junk makes base64 invalid: both are simply
    refused (never partly decoded, never logged).
    """
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


def credentials_match(header: str | None, expected: tuple[bytes, bytes]) -> bool:
    """Whether `header` carries exactly the expected user and password (constant-time compare)."""
    given = basic_credentials(header) if header else None
    user, password = given or (b"", b"")
    same = hmac.compare_digest(user, expected[0]) & hmac.compare_digest(password, expected[1])
    return bool(same and given)
