"""Make sure an opted-in project has one active webhook that sends TASKS_CREATED to this backend's `/webhook`.

Label Studio itself adds a webhook for every action at `<ML backend URL>/webhook` when a
backend is connected (when it may reach that address); when this backend is reachable at
the same URL, that one already carries TASKS_CREATED and is kept as it is, with the
basic-auth header added when `BASIC_AUTH_*` is set. Otherwise one webhook for
TASKS_CREATED alone is created. Never a second one for the same URL: set-up is idempotent.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from label_studio_sdk import LabelStudio

logger = logging.getLogger(__name__)

ACTION = "TASKS_CREATED"


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def backend_url(client: LabelStudio, project: int, public_url: str | None) -> str | None:
    """Where Label Studio reaches this backend: BACKEND_PUBLIC_URL, else the project's one connected ML backend."""
    if public_url:
        return public_url.rstrip("/")
    urls = {str(b.url).rstrip("/") for b in client.ml.list(project=project) if getattr(b, "url", None)}
    return urls.pop() if len(urls) == 1 else None


def backend_extra_params(client: LabelStudio, project: int, public_url: str | None) -> tuple[bool, Any]:
    """(found, extra params) of this backend's connection to the project: the one at BACKEND_PUBLIC_URL, else the
    project's only ML backend."""
    backends = list(client.ml.list(project=project))
    if public_url:
        backends = [b for b in backends if str(b.url).rstrip("/") == public_url.rstrip("/")]
    return (True, backends[0].extra_params) if len(backends) == 1 else (False, None)


def _covers(hook: Any) -> bool:
    return bool(hook.send_for_all_actions) or ACTION in (hook.actions or [])


def ensure_webhook(client: LabelStudio, project: int, url: str, auth_header: str | None = None) -> str:
    """Make the project's webhook to `<url>/webhook` active and sending TASKS_CREATED; what was done, in words."""
    target = url.rstrip("/") + "/webhook"
    wanted = {"Authorization": auth_header} if auth_header else {}
    hooks = [h for h in client.webhooks.list(project=str(project))
             if str(h.url).rstrip("/") == target and h.project == project]
    if not hooks:
        client.webhooks.create(url=target, project=project, actions=[ACTION], send_for_all_actions=False,
                               send_payload=True, is_active=True, headers=wanted)
        return f"created a TASKS_CREATED webhook to {target}"
    hook = next((h for h in hooks if h.is_active and _covers(h)), hooks[0])
    headers = dict(hook.headers or {})
    actions = sorted(set(hook.actions or []) | ({ACTION} if not hook.send_for_all_actions else set()))
    authorized = all(headers.get(k) == v for k, v in wanted.items())
    if hook.is_active and hook.send_payload and _covers(hook) and authorized:
        return f"webhook {hook.id} to {target} already sends TASKS_CREATED"
    # `actions` always sent: Label Studio clears a webhook's actions on an update without them.
    client.webhooks.update(hook.id, actions=actions, headers={**headers, **wanted}, is_active=True, send_payload=True)
    return f"updated webhook {hook.id} to {target} to send TASKS_CREATED"
