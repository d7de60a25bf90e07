"""Access: everything held about one user, from every store, as one JSON document.

A store implements :class:`Exportable` (``store`` and ``export(pseudonym)``, a JSON-ready
mapping of what it holds of them); :func:`export_user` asks each one and adds the audit's
records of the user (their erasures and consent withdrawals). ``held`` says whether any
store held anything: an export for someone the site knows nothing of says so explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from tailored.privacy.audit import AuditLog

__all__ = ["Exportable", "export_user", "holds_anything"]


@runtime_checkable
class Exportable(Protocol):
    """A store of user data that can show what it holds of one user."""

    @property
    def store(self) -> str: ...

    def export(self, user: str) -> Mapping[str, Any]: ...


def holds_anything(value: Any) -> bool:
    """Whether an export (or part of one) holds any data about the user: a value that is not
    None, empty, or a flag (``erased_or_withdrawn_before`` says something of the store, not
    of them)."""
    if isinstance(value, Mapping):
        return any(holds_anything(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(holds_anything(v) for v in value)
    return value is not None and not isinstance(value, bool) and value != ""


def export_user(
    user: str, stores: Sequence[Exportable], *, audit: AuditLog, extra: Mapping[str, Any] = {}
) -> dict[str, Any]:
    """The document: the pseudonym, the time, each store's part, ``extra`` parts (what the
    caller derives, such as experiment assignments), the audit records, and ``held``."""
    parts = {s.store: dict(s.export(user)) for s in stores}
    records = list(audit.records(user))
    return {
        "pseudonym": user,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "held": any(holds_anything(p) for p in parts.values()),
        "stores": parts,
        **dict(extra),
        "audit": records,
    }
