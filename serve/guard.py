"""Calls to the online state behind a circuit breaker, so that an outage degrades serving
instead of stalling it.

A Redis that is down fails a call at once; one that hangs fails it after ``[serve]
state_timeout_seconds``. Either way, :class:`StateGuard` then answers "unreachable" at once
for ``state_retry_seconds`` (no request waits for a timeout meanwhile), then lets one call
through to try it (the others keep failing at once until that one succeeds or the next
pause is over); the first success closes it again. ``on_change(up)`` hears each
transition: the server logs it, sets a gauge and the health service's ``tailored.online_state``
entry, so that recovery needs nobody.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tailored.serve.state import StateError

__all__ = ["StateGuard"]

T = TypeVar("T")


class StateGuard:
    def __init__(self, retry_seconds: float, on_change: Callable[[bool], None]) -> None:
        self.retry_seconds = retry_seconds
        self.on_change = on_change
        self.up = True
        self._down_until = 0.0
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, or :class:`StateError` at once while the breaker is open.
        Once the pause is over, one call tries the state; the others still fail at once."""
        with self._lock:
            if not self.up:
                now = time.monotonic()
                if now < self._down_until:
                    raise StateError("the online state is unreachable (retrying shortly)")
                self._down_until = now + self.retry_seconds  # this caller probes it
        try:
            result = fn(*args, **kwargs)
        except StateError:
            self._set(False)
            raise
        if not self.up:
            self._set(True)
        return result

    def _set(self, up: bool) -> None:
        # notified under the lock, so that the last transition is the one the health service
        # and the gauge show, whatever the order concurrent calls finish in
        with self._lock:
            if not up:
                self._down_until = time.monotonic() + self.retry_seconds
            if self.up == up:
                return
            self.up = up
            self.on_change(up)
