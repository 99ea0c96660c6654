"""Redis connections for the shared stores (response cache, quota ledger, example store, shared limits).

Imported lazily by the stores: only deployments that set `REDIS_URL` need the
`redis` package to reach a server. The description names host, port and database,
never the password a URL may carry, so it can go into logs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

TIMEOUT = 5.0  # seconds: a Redis that hangs costs a cache miss, not a stuck prediction


def describe(url: str) -> str:
    """`Redis host:port/db` for logs; the password is left out."""
    parsed = urlparse(url)
    return f"Redis {parsed.hostname or '?'}:{parsed.port or 6379}{parsed.path or ''}"


def connect(url: str) -> Any:
    """A `redis.Redis` client for `url`, with short timeouts."""
    import redis  # imported here: only deployments that set REDIS_URL need a server

    return redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
