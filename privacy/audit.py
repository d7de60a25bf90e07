"""The audit log: one JSON line per erasure, consent withdrawal, retention run and key
rotation, appended and fsynced, never rewritten.

Each record holds the SHA-256 of the line before it (``prev``), so that a line removed or
altered afterwards breaks the chain at that point (:meth:`AuditLog.verify`): the log shows it
was tampered with, although it cannot stop someone who can write the file. An erasure's record
names the user by pseudonym (never the raw id), which the site needs to answer "was I
erased?" and which is, by design, the one place the pseudonym stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tailored.data.tombstones import locked
from tailored.errors import TailoredError
from tailored.paths import privacy_dir

__all__ = ["AuditError", "AuditLog"]

_GENESIS = "0" * 64
_log = logging.getLogger(__name__)


class AuditError(TailoredError):
    """The audit log is unreadable or its chain is broken (the line is named)."""


class AuditLog:
    """``audit.jsonl`` in a privacy directory (default :func:`tailored.paths.privacy_dir`)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = Path(directory) if directory is not None else None

    @property
    def directory(self) -> Path:
        """The directory given, or :func:`~tailored.paths.privacy_dir` as the environment says
        now."""
        return self._directory if self._directory is not None else privacy_dir()

    @property
    def path(self) -> Path:
        return self.directory / "audit.jsonl"

    def append(self, action: str, **fields: Any) -> dict[str, Any]:
        """Append a record of ``action`` with ``fields`` and the time (UTC), durably; returns
        it as written."""
        with locked(self.directory / ".lock"):
            prev = _GENESIS
            lines = self._lines()
            if lines:
                prev = hashlib.sha256(lines[-1].encode()).hexdigest()
            record = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "action": action,
                **fields,
                "prev": prev,
            }
            line = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_APPEND, 0o600)
            try:
                # a line a crash cut short is closed first: it stays, and breaks the chain
                # where it is (verify says so), but the records after it read
                end = os.fstat(fd).st_size
                torn = end > 0 and os.pread(fd, 1, end - 1) != b"\n"
                os.write(fd, (("\n" if torn else "") + line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            return record

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line]

    def records(self, pseudonym: str | None = None) -> Iterator[dict[str, Any]]:
        """Every record (of ``pseudonym`` only, if given), oldest first; a line that is not
        JSON is skipped with a warning (:meth:`verify` names it)."""
        for i, line in enumerate(self._lines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                _log.warning("%s: line %d is not JSON (cut short?), skipped", self.path, i)
                continue
            if pseudonym is None or record.get("pseudonym") == pseudonym:
                yield record

    def verify(self) -> int:
        """Check the chain; the number of records. Raises :class:`AuditError` naming the first
        line whose ``prev`` is not the hash of the line before it."""
        prev = _GENESIS
        lines = self._lines()
        for i, line in enumerate(lines, 1):
            try:
                got = json.loads(line).get("prev")
            except json.JSONDecodeError as e:
                raise AuditError(f"{self.path}: line {i} is not JSON ({e})") from e
            if got != prev:
                raise AuditError(
                    f"{self.path}: line {i} does not follow line {i - 1} (a line was removed "
                    "or altered)"
                )
            prev = hashlib.sha256(line.encode()).hexdigest()
        return len(lines)
