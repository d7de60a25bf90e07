"""Erasure and retention in a dataset directory: a user's rows (profile, events, planted
truth) or every event from before a time, removed by rewriting the files without them.

The rewrite goes to a new directory beside the dataset (``.NAME.rewrite``: the files that do
not change are hard links, those that do are written whole and fsynced), which then takes the
dataset's place by :func:`swap_dir`, in one atomic exchange of the two directories: the
dataset is the old one or the new one, never half of each, and never missing. Deleted files'
blocks are the file system's to reuse: what the disk
itself keeps of them (no TRIM, snapshots, backups) is outside what a program can erase.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tailored.data.pseudonym import KeyMap
from tailored.data.schema import DatasetMeta, read_dataset_meta, write_dataset_meta
from tailored.data.tombstones import as_mask, locked, tombstoned
from tailored.errors import TailoredError

__all__ = ["DatasetStore", "RekeyError", "recover_dir", "swap_dir"]


class RekeyError(TailoredError):
    """A store is under a key that is neither the old one nor the new one."""


_BATCH = 1 << 20


def _staged(target: Path) -> tuple[Path, Path, Path]:
    """The rewrite, the old copy during a two-rename swap, and the marker that says the
    rewrite is whole: beside ``target``, never inside it."""
    name = target.name
    return (
        target.with_name(f".{name}.rewrite"),
        target.with_name(f".{name}.old"),
        target.with_name(f".{name}.complete"),
    )


def recover_dir(target: Path) -> None:
    """Finish or undo a :func:`swap_dir` a crash interrupted (only the two-rename fallback
    leaves ``target`` missing a moment): the whole rewrite moved into place, else the old
    copy moved back; then what is left of either removed."""
    new, old, marker = _staged(target)
    if not target.exists() and new.exists() and marker.exists():
        new.rename(target)
    elif not target.exists() and old.exists():
        old.rename(target)  # the rewrite was never finished: the old one stays
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    marker.unlink(missing_ok=True)


def swap_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Replace directory ``target`` by one ``write(new)`` fills: ``new`` starts as hard links to
    every file of ``target``; what ``write`` replaces it writes as new files (unlink first:
    never write through a link). Then the two directories are exchanged in one atomic step
    (Linux ``renameat2(RENAME_EXCHANGE)``): a reader sees the old one or the new one, never
    neither; where the system cannot exchange, two renames with a marker beside them, which
    :func:`recover_dir` reads after a crash."""
    recover_dir(target)
    new, old, marker = _staged(target)
    shutil.copytree(target, new, copy_function=os.link)
    try:
        write(new)
        _fsync_tree(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if _exchange(new, target):  # ``new`` holds the old files now
        _fsync(target.parent)
        shutil.rmtree(new, ignore_errors=True)
        return
    marker.touch()
    _fsync(target.parent)
    target.rename(old)
    new.rename(target)
    _fsync(target.parent)
    marker.unlink()
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``renameat2`` with ``RENAME_EXCHANGE``); False where the
    system or file system has no such call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if call(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for d, _, files in os.walk(root):
        for f in files:
            _fsync(Path(d) / f)
        _fsync(Path(d))


class DatasetStore:
    """A dataset directory as a store of user data (:class:`tailored.privacy.erasure.Forgettable`
    and ``Retains``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        # one rewrite at a time, between processes too
        self._lock = self.directory.parent / f".{self.directory.name}.lock"

    @property
    def store(self) -> str:
        return f"dataset {self.directory}"

    def forget(self, user: str) -> dict[str, int]:
        """Remove ``user`` (a pseudonym) from the dataset."""
        return self.forget_many([user])

    def forget_many(self, users: Collection[str]) -> dict[str, int]:
        """Remove every one of ``users`` (pseudonyms), in one rewrite."""
        with locked(self._lock):
            return self._remove(pa.array(sorted(set(users)), pa.string()))

    def forget_tombstoned(self, stones: frozenset[str]) -> dict[str, int]:
        """Remove every user whose tombstone is in ``stones``."""
        with locked(self._lock):
            recover_dir(self.directory)
            ids = pq.read_table(self.directory / "users.parquet", columns=["user_id"])
            col = ids.column("user_id")
            users = set(col.filter(pa.array(tombstoned(col, stones))).to_pylist())
            for batch in pq.ParquetFile(self.directory / "events.parquet").iter_batches(
                _BATCH, columns=["user_id"]
            ):
                c = batch.column("user_id")
                users.update(c.filter(pa.array(tombstoned(c, stones))).to_pylist())
            return self._remove(pa.array(sorted(users), pa.string()))

    def _remove(self, gone: pa.Array) -> dict[str, int]:
        """The users ``gone``: their profile row, their events, their rows of the planted
        truth (``truth/user_*.npy``, one row per user in the users table's order)."""
        recover_dir(self.directory)
        read_dataset_meta(self.directory)
        users = pq.read_table(self.directory / "users.parquet")
        gone_users = as_mask(pc.is_in(users.column("user_id"), value_set=gone))

        def drop(b: pa.RecordBatch) -> pa.Array:
            return pc.is_in(b.column("user_id"), value_set=gone)

        by_type = self._count(drop)
        events = sum(by_type.values())
        if not gone_users.any() and not events:
            return {"users": 0, "events": 0, "truth_rows": 0}
        truth_rows = 0
        keep = ~gone_users

        def write(new: Path) -> None:
            nonlocal truth_rows
            _rewrite_table(new / "users.parquet", users.filter(pa.array(keep)))
            self._rewrite_events(new, drop)
            truth_rows = _drop_truth_rows(new / "truth", keep)
            meta = read_dataset_meta(new)
            meta.counts = {**meta.counts, "users": int(keep.sum())}
            _subtract(meta, by_type)
            (new / "dataset.json").unlink()
            write_dataset_meta(new, meta)

        swap_dir(self.directory, write)
        return {"users": int(gone_users.sum()), "events": events, "truth_rows": truth_rows}

    def purge(self, before_ms: int) -> dict[str, int]:
        """Remove every event from before ``before_ms`` (unix ms; the events hold seconds)."""
        with locked(self._lock):
            return self._purge(before_ms)

    def _purge(self, before_ms: int) -> dict[str, int]:
        recover_dir(self.directory)
        read_dataset_meta(self.directory)
        bound = pa.scalar(int(before_ms) // 1000 + (1 if before_ms % 1000 else 0), pa.int64())

        def old(b: pa.RecordBatch) -> pa.Array:
            return pc.less(b.column("timestamp"), bound)

        by_type = self._count(old)
        events = sum(by_type.values())
        if not events:
            return {"events": 0}

        def write(new: Path) -> None:
            self._rewrite_events(new, old)
            meta = read_dataset_meta(new)
            _subtract(meta, by_type)
            (new / "dataset.json").unlink()
            write_dataset_meta(new, meta)

        swap_dir(self.directory, write)
        return {"events": events}

    def key_fingerprint(self) -> str:
        """The fingerprint of the key the dataset's user ids were written with."""
        with locked(self._lock):  # recovery must not meet another process's rewrite
            recover_dir(self.directory)
            return read_dataset_meta(self.directory).key_fingerprint

    def rekey(self, keys: KeyMap) -> dict[str, int]:
        """Move the dataset to the new key: every user id mapped (``keys``), every session key
        moved, the fingerprint changed, in one swap; a dataset already under the new key is
        left as it is."""
        with locked(self._lock):
            recover_dir(self.directory)
            meta = read_dataset_meta(self.directory)
            if meta.key_fingerprint == keys.new_fingerprint:
                return {"users": 0, "unmapped_users": 0, "already": 1}
            if meta.key_fingerprint != keys.old_fingerprint:
                raise RekeyError(
                    f"{self.directory}: written with key {meta.key_fingerprint}, neither the "
                    f"old key ({keys.old_fingerprint}) nor the new ({keys.new_fingerprint})"
                )
            users = pq.read_table(self.directory / "users.parquet")
            ids, unmapped = keys.apply(users.column("user_id"))

            def write(new: Path) -> None:
                at = users.schema.get_field_index("user_id")
                table = users.set_column(at, users.schema.field(at), ids)
                _rewrite_table(new / "users.parquet", table)
                path = new / "events.parquet"
                source = pq.ParquetFile(self.directory / "events.parquet")
                path.unlink()
                with pq.ParquetWriter(path, source.schema_arrow) as w:
                    for batch in source.iter_batches(_BATCH):
                        t = pa.Table.from_batches([batch])
                        col = t.schema.get_field_index("user_id")
                        mapped = keys.apply(t.column(col))[0]
                        t = t.set_column(col, t.schema.field(col), mapped)
                        col = t.schema.get_field_index("session")  # -1: none logged
                        if col >= 0:  # keyed hashes too: moved to the new key
                            moved = keys.apply_sessions(t.column(col))
                            t = t.set_column(col, t.schema.field(col), moved)
                        w.write_table(t)
                meta.key_fingerprint = keys.new_fingerprint
                (new / "dataset.json").unlink()
                write_dataset_meta(new, meta)

            swap_dir(self.directory, write)
            return {"users": users.num_rows - unmapped, "unmapped_users": unmapped, "already": 0}

    def export(self, user: str) -> dict[str, Any]:
        """``user``'s profile row and events (``tailored.privacy.export.Exportable``)."""
        read_dataset_meta(self.directory)
        match = pa.array([user], pa.string())
        users = pq.read_table(self.directory / "users.parquet")
        rows = users.filter(pc.is_in(users.column("user_id"), value_set=match)).to_pylist()
        events: list[dict[str, Any]] = []
        for batch in pq.ParquetFile(self.directory / "events.parquet").iter_batches(_BATCH):
            mine = pc.is_in(batch.column("user_id"), value_set=match)
            events += pa.Table.from_batches([batch]).filter(mine).drop(["user_id"]).to_pylist()
        return {
            "profile": {k: v for k, v in rows[0].items() if k != "user_id"} if rows else None,
            "events": events,
        }

    def _count(self, drop: Callable[[pa.RecordBatch], pa.Array]) -> dict[str, int]:
        """The events ``drop`` selects, per type."""
        n: dict[str, int] = {}
        for batch in pq.ParquetFile(self.directory / "events.parquet").iter_batches(_BATCH):
            dropped = batch.column("type").filter(drop(batch))
            for entry in pc.value_counts(dropped).to_pylist():
                n[entry["values"]] = n.get(entry["values"], 0) + int(entry["counts"])
        return n

    def _rewrite_events(self, new: Path, drop: Callable[[pa.RecordBatch], pa.Array]) -> None:
        path = new / "events.parquet"
        source = pq.ParquetFile(self.directory / "events.parquet")
        path.unlink()  # a hard link to the old file: write a new one, not through it
        with pq.ParquetWriter(path, source.schema_arrow) as w:
            for batch in source.iter_batches(_BATCH):
                w.write_table(pa.Table.from_batches([batch]).filter(pc.invert(drop(batch))))


def _subtract(meta: DatasetMeta, by_type: dict[str, int]) -> None:
    """``meta``'s event counts, in all and per type, less the events removed (``by_type``);
    a type none of whose events is left is no longer listed."""
    meta.counts = {**meta.counts, "events": meta.counts.get("events", 0) - sum(by_type.values())}
    left = {t: n - by_type.get(t, 0) for t, n in meta.event_types.items()}
    meta.event_types = {t: n for t, n in left.items() if n > 0}


def _rewrite_table(path: Path, table: pa.Table) -> None:
    path.unlink()
    pq.write_table(table, path)


def _drop_truth_rows(truth: Path, keep: np.ndarray) -> int:
    """Rows of removed users in the planted truth's per-user arrays (those whose first
    dimension is the number of users); the number of arrays rewritten times the users gone."""
    if not truth.is_dir():
        return 0
    rows = 0
    for path in sorted(truth.glob("user_*.npy")):
        arr = np.load(path, allow_pickle=False)
        if arr.ndim and arr.shape[0] == len(keep) and not keep.all():
            path.unlink()
            np.save(path, arr[keep], allow_pickle=False)
            rows += int((~keep).sum())
    return rows
