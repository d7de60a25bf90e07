"""Online state: what the server knows about users between bundles, with one interface and
two backends (:mod:`~tailored.serve.sqlite_state`, the embedded default, and
:mod:`~tailored.serve.redis_state`, shared by replicas); ``tests/test_state_contract.py``
runs the same suite against both.

Users are keyed by pseudonym (never a raw id); items by the site's item id, so that state
survives a bundle swap that renumbers rows. An event is durable when :meth:`record`
returns; only then does the server acknowledge it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from tailored.errors import TailoredError

__all__ = [
    "PERSONALIZATION",
    "OnlineState",
    "RecordResult",
    "StateError",
    "StoredEvent",
    "UserState",
    "open_state",
]

PERSONALIZATION = "personalization"
"""The consent purpose that allows personalized results and keeping behavioural events."""


class StateError(TailoredError):
    """The online state could not be read or written (unreachable, closed, failed)."""


@dataclass(frozen=True)
class StoredEvent:
    """One behavioural event of a user: ``type`` one of ``tailored.data.schema.EVENT_TYPES``,
    ``time_ms`` unix milliseconds, ``value`` the rating, dwell seconds or amount (0 if none)."""

    item_id: str
    type: str
    time_ms: int
    value: float = 0.0
    surface: str = ""


@dataclass(frozen=True)
class UserState:
    """A user's consent (``None``: never set, the server's default applies) and their most
    recent events, oldest first."""

    consent: frozenset[str] | None
    events: tuple[StoredEvent, ...]

    def allows(self, purpose: str, *, default: bool) -> bool:
        return default if self.consent is None else purpose in self.consent


@dataclass(frozen=True)
class RecordResult:
    accepted: int  # stored durably
    dropped: int  # not stored: the user's consent does not allow personalization


class OnlineState(ABC):
    """Per-user events and consent, and the set of unavailable items.

    Implementations are safe to call from many threads at once.
    """

    backend: ClassVar[str]

    @abstractmethod
    def record(
        self, events: Mapping[str, Sequence[StoredEvent]], *, default_allows: bool
    ) -> RecordResult:
        """Store events per user pseudonym, durably, in one step; a user whose consent does
        not include :data:`PERSONALIZATION` (or who has none and ``default_allows`` is
        false) has their events dropped, atomically with the consent check."""

    @abstractmethod
    def user(self, user: str, limit: int) -> UserState:
        """``user``'s consent and last ``limit`` events by time (ties by arrival)."""

    @abstractmethod
    def scan(self, types: Collection[str] | None = None) -> Iterator[tuple[str, StoredEvent]]:
        """Every kept event as (user pseudonym, event), of ``types`` only if given; users one
        after another, each user's events by time (for analyses such as experiment
        metrics, not for requests)."""

    @abstractmethod
    def set_consent(self, user: str, purposes: Iterable[str]) -> int:
        """Replace ``user``'s consent; without :data:`PERSONALIZATION` their stored events
        are forgotten in the same step. Returns the number of events forgotten."""

    @abstractmethod
    def forget(self, user: str) -> int:
        """Erase everything about ``user`` (events and consent); returns events removed."""

    @abstractmethod
    def set_available(self, item_ids: Iterable[str], available: bool) -> int:
        """Mark items (un)available for recommendation; returns how many are unavailable."""

    @abstractmethod
    def unavailable(self) -> frozenset[str]:
        """The site ids of items that must not be recommended."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and threads; the state on disk or in Redis stays."""

    def __enter__(self) -> OnlineState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_state(url: str, *, timeout: float | None = None) -> OnlineState:
    """The backend for ``url``: ``sqlite:///PATH`` (or a plain path) or ``redis://HOST:PORT/DB``
    (a ``?prefix=NAME`` query keeps several deployments apart on one Redis). ``timeout``:
    seconds a call to a remote backend may take (connecting or answering) before it fails
    with :class:`StateError`."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tailored.serve.redis_state import RedisState

        return RedisState.from_url(url, timeout=timeout)
    from pathlib import Path

    from tailored.serve.sqlite_state import SQLiteState

    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    return SQLiteState(Path(path))
