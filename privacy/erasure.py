"""Erasure, walking every store that holds user data, and retention.

A store implements :class:`Forgettable`: ``store`` (what the audit calls it) and
``forget(pseudonym)`` returning how many of each kind of thing it removed (an empty or
all-zero answer: it held nothing of them). The online state (both backends,
``tailored.serve.state``), a dataset (``tailored.data.forget.DatasetStore``) and a bundles root
(``tailored.bundle.forget.BundleStore``) implement it; :func:`erase` walks the ones it is
given. Stores that keep events also implement :class:`Retains` for :func:`enforce_retention`.

Order matters for what a failure leaves: the user's tombstone is written first, durably, so
that every later import and training run leaves them out whatever happens next; then each
store; then the audit record, which names what each store removed and which store failed and
why. A failure in one store does not stop the others; the caller reports it (the command
exits non-zero), and erasing again finishes the job: each store's erasure is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from tailored.data.tombstones import TombstoneList, tombstone
from tailored.privacy.audit import AuditLog

__all__ = [
    "Erasure",
    "Forgettable",
    "Retains",
    "Retention",
    "each_store",
    "enforce_retention",
    "erase",
    "failures",
    "summary",
]


@runtime_checkable
class _Store(Protocol):
    @property
    def store(self) -> str: ...


S = TypeVar("S", bound=_Store)


@runtime_checkable
class Forgettable(Protocol):
    """A store of user data that can forget one user."""

    @property
    def store(self) -> str: ...

    def forget(self, user: str) -> Mapping[str, int]: ...


@runtime_checkable
class Retains(Protocol):
    """A store of events that can drop those from before a time (unix ms)."""

    @property
    def store(self) -> str: ...

    def purge(self, before_ms: int) -> Mapping[str, int]: ...


@dataclass
class Erasure:
    """What one erasure did: per store, what it removed, or why it failed."""

    pseudonym: str
    removed: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def held(self) -> bool:
        """Whether any store held anything of the user."""
        return any(n for counts in self.removed.values() for n in counts.values())


def erase(
    user: str,
    stores: Sequence[Forgettable],
    *,
    audit: AuditLog,
    tombstones: TombstoneList,
    reason: str = "erasure",
) -> Erasure:
    """Forget ``user`` (a pseudonym) in every store, after writing their tombstone, and append
    the audit record (action ``reason``: an erasure request, a consent withdrawal)."""
    tombstones.add([tombstone(user)])
    out = Erasure(user)
    out.removed, out.failed = each_store(stores, lambda s: s.forget(user))
    audit.append(
        reason,
        pseudonym=user,
        removed=out.removed,
        failed=out.failed,
        held=out.held,
    )
    return out


@dataclass
class Retention:
    """What one retention run removed, per store, and what failed."""

    before_ms: int
    removed: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def enforce_retention(
    stores: Sequence[Retains], *, days: float, audit: AuditLog, now: float | None = None
) -> Retention:
    """Remove from every store what is older than ``days``, and append the audit record with
    the counts."""
    if days <= 0:
        raise ValueError(f"retention days must be > 0, got {days}")
    now = time.time() if now is None else now
    out = Retention(int((now - days * 86_400) * 1000))
    out.removed, out.failed = each_store(stores, lambda s: s.purge(out.before_ms))
    audit.append(
        "retention", days=days, before_ms=out.before_ms, removed=out.removed, failed=out.failed
    )
    return out


def each_store(
    stores: Sequence[S], call: Callable[[S], Mapping[str, int]]
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """``call`` on every store: what each returned, and why each that raised failed (the
    others still run: a failure names its store, and running again finishes the job)."""
    done: dict[str, dict[str, int]] = {}
    failed: dict[str, str] = {}
    for s in stores:
        try:
            done[s.store] = {k: int(v) for k, v in call(s).items()}
        except Exception as e:
            failed[s.store] = f"{type(e).__name__}: {e}"
    return done, failed


def failures(failed: Mapping[str, str]) -> str:
    """``store: why; ...`` for an error message."""
    return "; ".join(f"{store}: {why}" for store, why in failed.items())


def summary(removed: Mapping[str, Mapping[str, int]]) -> str:
    """``store: 3 events, 1 pages; ...`` for people."""
    parts = []
    for store, counts in removed.items():
        what = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n)
        parts.append(f"{store}: {what or 'nothing'}")
    return "; ".join(parts)
