"""HTTP basic auth for every route, checked before any view runs."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Flask, jsonify, request

logger = logging.getLogger(__name__)


def require_basic_auth(app: Flask, user: str, password: str) -> None:
    """Answer 401 to any request without the configured credentials (as label-studio-ml 2.x does).

    Label Studio sends them on /health, /setup, /predict and the Train button's
    /webhook; its annotation-event webhooks carry only the headers set on the webhook.
    """
    expected = (user.encode(), password.encode())

    @app.before_request
    def check_credentials() -> Any:
        auth = request.authorization
        given = (str(auth.username or "").encode(), str(auth.password or "").encode()) if auth else (b"", b"")
        if hmac.compare_digest(given[0], expected[0]) & hmac.compare_digest(given[1], expected[1]):
            return None
        if request.path.rstrip("/") == "/webhook" and auth is None:
            # Rejected on purpose (events may feed learning), but say how to let them in.
            logger.warning(
                "标注事件 webhook 未带认证：请在 Label Studio 的 Webhooks 设置中为它添加 Authorization 头 "
                "(annotation webhook without credentials: add an Authorization header to the project's webhook)"
            )
        response = jsonify({"status": 401, "detail": "需要认证 (authentication required)"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
        return response
