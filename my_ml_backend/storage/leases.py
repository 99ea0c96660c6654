"""Leases in Redis: held while their holder renews them, free again within one lease once it stops.

A process killed mid-work (`kill -9`) stops renewing, so what it held blocks others for one
lease at most; a holder gives back only what is still its own (compare the token, then delete).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Give back / extend a key only while it still holds our token (another holder may have it since).
_GIVE_BACK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_EXTEND = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


class Renewer:
    """A daemon thread that calls `renew()` every `interval` seconds: the heartbeat of our leases."""

    def __init__(self, interval: float, renew: Callable[[], None], name: str) -> None:
        self._interval = interval
        self._renew = renew
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease has margin
                logger.debug("Lease renewal failed: %s", exc)


class KeyLeases:
    """Keys under `prefix` this process holds in Redis (`SET NX PX`), renewed every third of `lease` while held."""

    def __init__(self, redis: Any, prefix: str, lease: float, name: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = int(lease * 1000)
        self.name = name
        self._held: dict[str, str] = {}  # key -> token
        self._lock = threading.Lock()
        self._renewer: Renewer | None = None

    def take(self, key: str) -> str | None:
        """A token when this process now holds `key`, None while another holder has it."""
        token = uuid.uuid4().hex
        if not self.redis.set(self.prefix + key, token, nx=True, px=self.lease_ms):
            return None
        with self._lock:
            self._held[key] = token
            if self._renewer is None:
                self._renewer = Renewer(self.lease_ms / 3000, self._renew, name=self.name)
        return token

    def give_back(self, key: str, token: str) -> None:
        with self._lock:
            self._held.pop(key, None)
        self.redis.eval(_GIVE_BACK, 1, self.prefix + key, token)

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for key, token in held:
            self.redis.eval(_EXTEND, 1, self.prefix + key, token, self.lease_ms)
