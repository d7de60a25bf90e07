"""The tombstone list: the users whose data was erased or who withdrew consent to
personalization, as tombstones (:func:`tombstone`, a hash of the pseudonym: the list holds
neither a raw id nor a pseudonym).

Every later import and training run leaves these users out entirely, their profile and all
their events (:func:`tombstoned`): a tombstoned user is served from what they do afterwards
(the online state), and no bundle learns from them again. The list lives in
``tailored.paths.privacy_dir()/tombstones``, one tombstone a line, appended under a lock and
fsynced (:meth:`TombstoneList.add`); the online state keeps its own copy, with the time, for
serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tailored.paths import privacy_dir

__all__ = ["TombstoneList", "as_mask", "locked", "tombstone", "tombstoned"]

_log = logging.getLogger(__name__)
_LINE = re.compile(r"[0-9a-f]{32}")


def tombstone(user: str) -> str:
    """The tombstone of a user pseudonym: a hash of it, so that the list of users whose data
    was erased holds neither their raw id nor their pseudonym."""
    return hashlib.sha256(b"tailored-tombstone\0" + user.encode()).hexdigest()[:32]


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """An advisory lock on ``path`` between processes and threads: exclusive (a writer, who
    creates the file if missing), or ``shared`` (readers, who only keep writers out, and
    create nothing: where there is no lock file, or it cannot be opened, there is no writer
    that uses one, and a reader goes on without it)."""
    try:
        if shared:
            fd = os.open(path, os.O_RDONLY)
        else:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        if not shared:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class TombstoneList:
    """The tombstone file of a privacy directory (default :func:`tailored.paths.privacy_dir`)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = Path(directory) if directory is not None else None

    @property
    def directory(self) -> Path:
        """The directory given, or :func:`~tailored.paths.privacy_dir` as the environment says
        now (a long-lived server follows it)."""
        return self._directory if self._directory is not None else privacy_dir()

    @property
    def path(self) -> Path:
        return self.directory / "tombstones"

    def read(self) -> frozenset[str]:
        """Every tombstone; a line that is not one (a write cut short) is skipped with a
        warning, and its tombstone is written again by the erasure that retries."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return frozenset()
        stones, bad = set(), 0
        for line in text.splitlines():
            if _LINE.fullmatch(line):
                stones.add(line)
            elif line:
                bad += 1
        if bad:
            _log.warning("%s: %d line(s) are not tombstones, skipped", self.path, bad)
        return frozenset(stones)

    def add(self, stones: Iterable[str]) -> int:
        """Append the tombstones not listed yet, durably (fsync) before returning; the number
        added."""
        todo = sorted(set(stones))
        for s in todo:
            if not _LINE.fullmatch(s):
                raise ValueError(f"not a tombstone: {s!r}")
        with locked(self.directory / ".lock"):
            listed = self.read()
            new = [s for s in todo if s not in listed]
            if not new:
                return 0
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            try:
                # a line cut short by a crash is completed by a newline first
                size = os.fstat(fd).st_size
                lead = ""
                if size:
                    with open(self.path, "rb") as f:
                        f.seek(size - 1)
                        lead = "" if f.read(1) == b"\n" else "\n"
                os.write(fd, (lead + "".join(s + "\n" for s in new)).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            return len(new)


def tombstoned(ids: pa.Array | pa.ChunkedArray, stones: frozenset[str]) -> np.ndarray:
    """bool [N]: which of the pseudonyms ``ids`` have a tombstone in ``stones`` (hashing each
    distinct id once)."""
    n = len(ids)
    if not stones or n == 0:
        return np.zeros(n, bool)
    distinct = pc.unique(ids)
    gone = [u for u in distinct.to_pylist() if u is not None and tombstone(u) in stones]
    if not gone:
        return np.zeros(n, bool)
    return as_mask(pc.is_in(ids, value_set=pa.array(gone, ids.type)))


def as_mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow boolean array as a numpy one (nulls as False)."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), bool)
