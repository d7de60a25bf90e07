"""Key rotation: every store moved from the old pseudonymization key to a new one.

A pseudonym is ``HMAC(key, raw id)``: turning one into the other takes the raw id, so
re-keying starts from the site's list of its users' ids (:class:`tailored.data.pseudonym.
KeyMap`). Each store implements :class:`Rekeyable`: its key's fingerprint and ``rekey(keys)``,
which moves it whole or not at all (a transaction for the online state, a directory swap for
a dataset or a bundle version) and leaves a store already under the new key as it is.

:func:`rekey` keeps a journal (``rekey.json`` in the privacy directory) naming the two keys
and what is done: a run that stops halfway (a crash, a failed store) leaves every store
readable, under one key or the other, and the next run with the same keys finishes the rest;
a run with other keys is refused while one is unfinished. The tombstones of the users mapped
are added under the new key first, so that no erased user comes back; the audit records the
rotation. Installing the new key is the caller's last step, once every store has moved.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tailored.data.pseudonym import KeyMap
from tailored.data.tombstones import TombstoneList, tombstone
from tailored.errors import TailoredError
from tailored.paths import write_json_atomic
from tailored.privacy.audit import AuditLog

__all__ = ["Rekey", "RekeyRefused", "Rekeyable", "journal", "rekey"]


class RekeyRefused(TailoredError):
    """Another re-keying is unfinished, or the keys given make no rotation."""


@runtime_checkable
class Rekeyable(Protocol):
    """A store of pseudonymous user data that can move to a new key."""

    @property
    def store(self) -> str: ...

    def key_fingerprint(self) -> str | None: ...

    def rekey(self, keys: KeyMap) -> Mapping[str, int]: ...


@dataclass
class Rekey:
    """What one run did: per store, what moved (or that it was done already), what failed."""

    moved: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed


def rekey(
    stores: Sequence[Rekeyable],
    keys: KeyMap,
    *,
    audit: AuditLog,
    tombstones: TombstoneList,
) -> Rekey:
    """Move every store to the new key, journalled (see the module's doc)."""
    if keys.old_fingerprint == keys.new_fingerprint:
        raise RekeyRefused("the new key is the old key: nothing to rotate")
    path = audit.directory / "rekey.json"
    journal: dict[str, Any] = {}
    if path.is_file():
        journal = json.loads(path.read_text())
        if (journal.get("from"), journal.get("to")) != (keys.old_fingerprint, keys.new_fingerprint):
            raise RekeyRefused(
                f"{path}: a re-keying from key {journal.get('from')} to {journal.get('to')} is "
                "unfinished; run it again with those keys first"
            )
    journal = {
        "from": keys.old_fingerprint,
        "to": keys.new_fingerprint,
        "started": journal.get("started") or datetime.now(UTC).isoformat(timespec="seconds"),
        "stores": dict(journal.get("stores", {})),
    }
    write_json_atomic(path, journal)
    listed = tombstones.read()
    tombstones.add(tombstone(new) for old, new in keys.pairs() if tombstone(old) in listed)
    out = Rekey()
    for s in stores:
        try:
            out.moved[s.store] = {k: int(v) for k, v in s.rekey(keys).items()}
            journal["stores"][s.store] = "done"
        except Exception as e:  # the others still move; this one is named
            out.failed[s.store] = f"{type(e).__name__}: {e}"  # as each_store says it
            journal["stores"][s.store] = "failed"
        write_json_atomic(path, journal)
    audit.append(
        "rekey",
        from_key=keys.old_fingerprint,
        to_key=keys.new_fingerprint,
        moved=out.moved,
        failed=out.failed,
    )
    if out.complete:
        path.unlink()
    return out


def journal(directory: Path) -> dict[str, Any] | None:
    """The unfinished re-keying's journal in ``directory``, or None."""
    path = Path(directory) / "rekey.json"
    return json.loads(path.read_text()) if path.is_file() else None
