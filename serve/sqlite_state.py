"""The embedded online state: one SQLite file in WAL mode, which is also the event log.

Writes go through one writer thread that commits whatever is queued in one transaction
(group commit) with ``synchronous=FULL``, so an event is on disk (fsync) before
:meth:`SQLiteState.record` returns, and concurrent Track calls share an fsync. Readers use
their own connections (one per thread); WAL lets them read while the writer writes.

Erasure (:meth:`SQLiteState.forget`, withdrawing consent) leaves nothing readable behind in
the files: ``secure_delete`` zeroes deleted rows in the database's pages, and the write-ahead
log, whose frames still hold them, is checkpointed and truncated before the call returns.
A reader that holds an older snapshot (another process's long read, a backup) blocks that
for as long as it reads: the writer waits for it at most a quarter of a second, then goes
on and tries again in the background (1 s, doubling up to a minute apart) until the log is
truncated, with a warning in the log each time it could not.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow as pa

from tailored.data.forget import RekeyError
from tailored.data.pseudonym import KeyMap
from tailored.experiments.bandit import ArmStats
from tailored.serve.state import (
    PERSONALIZATION,
    ArmUpdate,
    ConsentChange,
    Feedback,
    OnlineState,
    PageLog,
    RecordResult,
    StateError,
    StoredEvent,
    UserState,
    arm_stats,
    tombstone,
)

__all__ = ["SQLiteState"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    item TEXT NOT NULL,
    type TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    surface TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user, time_ms, seq);
CREATE TABLE IF NOT EXISTS consent (
    user TEXT PRIMARY KEY,
    purposes TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consent_log (
    user TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    purposes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_log_by_user ON consent_log (user, time_ms);
CREATE TABLE IF NOT EXISTS unavailable (item TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pages (
    request_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    record TEXT NOT NULL,
    flags TEXT NOT NULL  -- a newline, then KIND:MODULE and a newline per feedback seen
);
CREATE INDEX IF NOT EXISTS pages_by_user ON pages (user);
CREATE INDEX IF NOT EXISTS pages_by_expiry ON pages (expires_ms);
CREATE TABLE IF NOT EXISTS forgotten (tombstone TEXT PRIMARY KEY, time_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS arms (
    arm TEXT NOT NULL,
    field TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (arm, field)
) WITHOUT ROWID;
"""
_MAX_GROUP = 256  # queued writes committed together at most
# Opening waits this long at most for another process (a sibling worker, a replica) that
# holds the file: switching a new file to WAL and creating the schema take locks for which
# SQLite does not always call its busy handler, so "database is locked" is retried here.
_OPEN_SECONDS = 10.0
# After an erasure, the log's truncation waits this long at most for readers of an older
# snapshot (holding every write meanwhile), then is retried this many seconds later,
# doubling, at most this far apart.
_SCRUB_WAIT = 0.25
_SCRUB_RETRY = (1.0, 60.0)

_log = logging.getLogger(__name__)

_Write = Callable[[sqlite3.Connection], Any]


class SQLiteState(OnlineState):
    """Online state in the SQLite file ``path`` (created if missing)."""

    backend = "sqlite"

    @property
    def store(self) -> str:
        return f"online state sqlite:///{self.path}"

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise StateError(f"sqlite synchronous must be FULL, NORMAL or EXTRA: {synchronous}")
        self.path = Path(path)
        # user data: readable by this account only (SQLite gives its -wal and -shm files the
        # database file's permissions)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)  # a file from before this version was 0644
        except OSError as e:
            raise StateError(f"{self.path}: cannot open the online state ({e})") from e
        self._synchronous = synchronous
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # writer thread only: an erasure in the group being committed; when to try again to
        # scrub the log of an earlier one (monotonic seconds; None: nothing to scrub), and
        # the pause before the try after that
        self._erased = False
        self._scrub_at: float | None = None
        self._scrub_pause = _SCRUB_RETRY[0]
        writer = self._connect(schema=True)
        self._queue: queue.Queue[tuple[_Write, Future[Any]] | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(
            target=self._write_loop, args=(writer,), name="sqlite-state-writer", daemon=True
        )
        self._thread.start()

    def _connect(self, *, schema: bool = False) -> sqlite3.Connection:
        deadline = time.monotonic() + _OPEN_SECONDS
        pause = 0.005
        while True:
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=_OPEN_SECONDS
                )
                conn.execute(f"PRAGMA busy_timeout={int(_OPEN_SECONDS * 1000)}")
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    conn.close()
                    raise StateError(
                        f"{self.path}: cannot open the online state (journal mode is {mode!r}, "
                        "not WAL; is the file on a file system without shared memory?)"
                    )
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                # deleted rows are overwritten, not left in free pages (not every build's default)
                conn.execute("PRAGMA secure_delete=ON")
                if schema:
                    conn.executescript(_SCHEMA)
                return conn
            except sqlite3.Error as e:
                if conn is not None:
                    conn.close()
                locked = isinstance(e, sqlite3.OperationalError) and (
                    "locked" in str(e) or "busy" in str(e)
                )
                if not locked or time.monotonic() + pause > deadline:
                    raise StateError(f"{self.path}: cannot open the online state ({e})") from e
                time.sleep(pause)
                pause = min(pause * 2, 0.2)

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StateError(f"{self.path}: the online state is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    # -- the writer ------------------------------------------------------------------------
    def _write_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            wait = None if self._scrub_at is None else self._scrub_at - time.monotonic()
            if wait is not None and wait <= 0:  # time to try scrubbing the log again
                self._scrub_log(conn)
                continue
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if first is None:
                break
            group = [first]
            while len(group) < _MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this group, then stop
                    break
                group.append(nxt)
            self._commit(conn, group)
        conn.close()

    def _scrub_log(self, conn: sqlite3.Connection) -> None:
        """After an erasure: copy the log into the database (where ``secure_delete`` has
        zeroed the erased rows) and truncate it, since its frames still hold them. Waits
        ``_SCRUB_WAIT`` at most for readers of an older snapshot; if one still reads, the
        next try is scheduled."""
        try:
            conn.execute(f"PRAGMA busy_timeout={int(_SCRUB_WAIT * 1000)}")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout={int(_OPEN_SECONDS * 1000)}")
            problem = "a reader holds an older snapshot" if busy else ""
        except sqlite3.Error as e:
            problem = str(e)
        if not problem:
            self._scrub_at, self._scrub_pause = None, _SCRUB_RETRY[0]
            return
        _log.warning(
            "%s: the write-ahead log still holds erased events (%s); trying again in %.0f s",
            self.path,
            problem,
            self._scrub_pause,
        )
        self._scrub_at = time.monotonic() + self._scrub_pause
        self._scrub_pause = min(self._scrub_pause * 2, _SCRUB_RETRY[1])

    def _commit(self, conn: sqlite3.Connection, group: list[tuple[_Write, Future[Any]]]) -> None:
        results: list[Any] = []
        self._erased = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write, _ in group:
                conn.execute("SAVEPOINT one")
                try:
                    results.append(write(conn))
                    conn.execute("RELEASE one")
                except Exception as e:  # this write fails alone; the group goes on
                    conn.execute("ROLLBACK TO one")
                    conn.execute("RELEASE one")
                    results.append(e)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, fut in group:
                fut.set_exception(StateError(f"online state write failed: {e}"))
            return
        if self._erased:  # before the erasure's caller hears it is done
            self._scrub_log(conn)
        for (_, fut), res in zip(group, results, strict=True):
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def _write(self, write: _Write) -> Any:
        if self._closed:
            raise StateError(f"{self.path}: the online state is closed")
        fut: Future[Any] = Future()
        self._queue.put((write, fut))
        return fut.result()  # returns once committed (fsync'd)

    # -- the interface ---------------------------------------------------------------------
    def record(
        self, events: Mapping[str, Sequence[StoredEvent]], *, default_allows: bool
    ) -> RecordResult:
        for evs in events.values():
            for e in evs:
                if not math.isfinite(e.value):
                    raise StateError(f"event value must be finite, got {e.value}")

        def write(conn: sqlite3.Connection) -> RecordResult:
            accepted = dropped = 0
            for user, evs in events.items():
                row = conn.execute("SELECT purposes FROM consent WHERE user=?", (user,)).fetchone()
                allowed = default_allows if row is None else PERSONALIZATION in _split(row[0])
                if not allowed:
                    dropped += len(evs)
                    continue
                conn.executemany(
                    "INSERT INTO events (user, item, type, time_ms, value, surface) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(user, e.item_id, e.type, e.time_ms, e.value, e.surface) for e in evs],
                )
                accepted += len(evs)
            return RecordResult(accepted, dropped)

        result: RecordResult = self._write(write)
        return result

    def user(self, user: str, limit: int) -> UserState:
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot for both reads
        try:
            row = conn.execute("SELECT purposes FROM consent WHERE user=?", (user,)).fetchone()
            rows = conn.execute(
                "SELECT item, type, time_ms, value, surface FROM events WHERE user=? "
                "ORDER BY time_ms DESC, seq DESC LIMIT ?",
                (user, max(int(limit), 0)),
            ).fetchall()
            gone = conn.execute(
                "SELECT 1 FROM forgotten WHERE tombstone=?", (tombstone(user),)
            ).fetchone()
        finally:
            conn.execute("COMMIT")
        return UserState(
            consent=None if row is None else _split(row[0]),
            events=tuple(StoredEvent(*r) for r in reversed(rows)),
            forgotten=gone is not None,
        )

    def scan(self, types: Collection[str] | None = None) -> Iterator[tuple[str, StoredEvent]]:
        conn = self._connect()  # its own connection: a long read beside the requests'
        try:
            where = ""
            args: tuple[str, ...] = ()
            if types is not None:
                chosen = tuple(types)
                where = f"WHERE type IN ({','.join('?' * len(chosen))}) " if chosen else "WHERE 0 "
                args = chosen
            rows = conn.execute(
                "SELECT user, item, type, time_ms, value, surface FROM events "
                f"{where}ORDER BY user, time_ms, seq",
                args,
            )
            for user, *event in rows:
                yield user, StoredEvent(*event)
        finally:
            conn.close()

    def set_consent(self, user: str, purposes: Iterable[str]) -> int:
        chosen = frozenset(purposes)
        now = int(time.time() * 1000)

        def write(conn: sqlite3.Connection) -> int:
            text = ",".join(sorted(chosen))
            conn.execute(
                "INSERT INTO consent (user, purposes, updated_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(user) DO UPDATE SET purposes=excluded.purposes, "
                "updated_ms=excluded.updated_ms",
                (user, text, now),
            )
            conn.execute(
                "INSERT INTO consent_log (user, time_ms, purposes) VALUES (?, ?, ?)",
                (user, now, text),
            )
            if PERSONALIZATION in chosen:
                return 0
            return self._erase(conn, user)["events"]

        forgotten: int = self._write(write)
        return forgotten

    def forget(self, user: str) -> dict[str, int]:
        def write(conn: sqlite3.Connection) -> dict[str, int]:
            gone = conn.execute("DELETE FROM consent WHERE user=?", (user,)).rowcount
            history = conn.execute("DELETE FROM consent_log WHERE user=?", (user,)).rowcount
            self._erased = self._erased or gone > 0 or history > 0
            return {"consent": gone, "consent_history": history, **self._erase(conn, user)}

        removed: dict[str, int] = self._write(write)
        return removed

    def _erase(self, conn: sqlite3.Connection, user: str) -> dict[str, int]:
        conn.execute(
            "INSERT OR REPLACE INTO forgotten (tombstone, time_ms) VALUES (?, ?)",
            (tombstone(user), int(time.time() * 1000)),
        )
        n = conn.execute("DELETE FROM events WHERE user=?", (user,)).rowcount
        pages = conn.execute("DELETE FROM pages WHERE user=?", (user,)).rowcount
        self._erased = self._erased or n > 0 or pages > 0
        return {"events": n, "pages": pages}

    def purge(self, before_ms: int) -> dict[str, int]:
        def write(conn: sqlite3.Connection) -> dict[str, int]:
            n = conn.execute("DELETE FROM events WHERE time_ms < ?", (before_ms,)).rowcount
            pages = conn.execute("DELETE FROM pages WHERE time_ms < ?", (before_ms,)).rowcount
            self._erased = self._erased or n > 0 or pages > 0
            return {"events": n, "pages": pages}

        purged: dict[str, int] = self._write(write)
        return purged

    def key_fingerprint(self) -> str | None:
        row = (
            self._reader().execute("SELECT value FROM meta WHERE key='key_fingerprint'").fetchone()
        )
        return None if row is None else str(row[0])

    def rekey(self, keys: KeyMap) -> dict[str, int]:
        """Every user pseudonym moved to the new key in one transaction (events, consent and
        its history, logged pages, tombstones), and the key's fingerprint recorded; a state
        already under the new key is left as it is. A state written before fingerprints were
        kept is taken to be under the old key."""

        def write(conn: sqlite3.Connection) -> dict[str, int]:
            row = conn.execute("SELECT value FROM meta WHERE key='key_fingerprint'").fetchone()
            now = None if row is None else row[0]
            if now == keys.new_fingerprint:
                return {"users": 0, "unmapped_users": 0, "already": 1}
            if now not in (None, keys.old_fingerprint):
                raise RekeyError(
                    f"{self.path}: written with key {now}, neither the old key "
                    f"({keys.old_fingerprint}) nor the new ({keys.new_fingerprint})"
                )
            users = [
                r[0]
                for r in conn.execute(
                    "SELECT user FROM (SELECT user FROM events UNION SELECT user FROM consent "
                    "UNION SELECT user FROM consent_log UNION SELECT user FROM pages) "
                    "WHERE user != ''"
                )
            ]
            mapped, unmapped = keys.apply(pa.array(users, pa.string()))
            for old, new in zip(users, mapped.to_pylist(), strict=True):
                if old == new:
                    continue
                for table in ("events", "consent", "consent_log"):
                    conn.execute(f"UPDATE {table} SET user=? WHERE user=?", (new, old))
                for rid, record, flags in conn.execute(
                    "SELECT request_id, record, flags FROM pages WHERE user=?", (old,)
                ).fetchall():
                    page = dataclasses.replace(_page(record, flags), user=new)
                    conn.execute(
                        "UPDATE pages SET user=?, record=? WHERE request_id=?",
                        (new, page.encode(), rid),
                    )
            # every mapped user's tombstone, the erased ones' too (nothing else is left of them)
            for old, new in keys.pairs():
                gone = conn.execute(
                    "SELECT time_ms FROM forgotten WHERE tombstone=?", (tombstone(old),)
                ).fetchone()
                if gone is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO forgotten (tombstone, time_ms) VALUES (?, ?)",
                        (tombstone(new), gone[0]),
                    )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('key_fingerprint', ?)",
                (keys.new_fingerprint,),
            )
            self._erased = True  # the old pseudonyms are in deleted cells: scrub the log
            return {"users": len(users) - unmapped, "unmapped_users": unmapped, "already": 0}

        done: dict[str, int] = self._write(write)
        return done

    def consent_history(self, user: str) -> list[ConsentChange]:
        rows = (
            self._reader()
            .execute(
                "SELECT time_ms, purposes FROM consent_log WHERE user=? ORDER BY time_ms, rowid",
                (user,),
            )
            .fetchall()
        )
        return [ConsentChange(int(t), _split(p)) for t, p in rows]

    def consents(self) -> dict[str, frozenset[str]]:
        rows = self._reader().execute("SELECT user, purposes FROM consent").fetchall()
        return {u: _split(p) for u, p in rows}

    def user_pages(self, user: str) -> list[PageLog]:
        rows = (
            self._reader()
            .execute(
                "SELECT record, flags FROM pages WHERE user=? AND expires_ms >= ? "
                "ORDER BY time_ms, request_id",
                (user, int(time.time() * 1000)),
            )
            .fetchall()
        )
        return [_page(r, f) for r, f in rows]

    # -- pages and arms --------------------------------------------------------------------
    def log_pages(
        self,
        pages: Sequence[PageLog],
        updates: Mapping[str, Sequence[ArmUpdate]],
        ttl_ms: int,
    ) -> int:
        now = int(time.time() * 1000)

        def write(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM pages WHERE expires_ms < ?", (now,))
            kept = 0
            for p in pages:
                if p.user:
                    gone = conn.execute(
                        "SELECT time_ms FROM forgotten WHERE tombstone=?", (tombstone(p.user),)
                    ).fetchone()
                    if gone is not None and gone[0] >= p.served_ms:
                        continue  # erased after it was served: the erasure wins
                conn.execute(
                    "INSERT OR REPLACE INTO pages (request_id, user, time_ms, expires_ms, "
                    "record, flags) VALUES (?, ?, ?, ?, ?, ?)",
                    (p.request_id, p.user, p.time_ms, now + ttl_ms, p.encode(), "\n"),
                )
                _apply(conn, updates.get(p.request_id, ()))
                kept += 1
            return kept

        written: int = self._write(write)
        return written

    def page(self, request_id: str) -> PageLog | None:
        row = (
            self._reader()
            .execute(
                "SELECT record, flags FROM pages WHERE request_id=? AND expires_ms >= ?",
                (request_id, int(time.time() * 1000)),
            )
            .fetchone()
        )
        return None if row is None else _page(*row)

    def page_feedback(self, feedback: Sequence[Feedback]) -> int:
        now = int(time.time() * 1000)

        def write(conn: sqlite3.Connection) -> int:
            new = 0
            for f in feedback:
                token = f"{f.mark}\n"
                changed = conn.execute(
                    "UPDATE pages SET flags = flags || ? WHERE request_id=? "
                    "AND instr(flags, ?) = 0 AND expires_ms >= ?",
                    (token, f.request_id, "\n" + token, now),
                ).rowcount
                if changed:
                    new += 1
                    if f.update is not None:
                        _apply(conn, [f.update])
            return new

        applied: int = self._write(write)
        return applied

    def arms(self, arms: Collection[str]) -> dict[str, ArmStats]:
        chosen = list(dict.fromkeys(arms))
        if not chosen:
            return {}
        rows = (
            self._reader()
            .execute(
                f"SELECT arm, field, value FROM arms WHERE arm IN ({','.join('?' * len(chosen))})",
                chosen,
            )
            .fetchall()
        )
        fields: dict[str, list[tuple[str, float]]] = {}
        for arm, key, value in rows:
            fields.setdefault(arm, []).append((key, value))
        return {arm: arm_stats(f) for arm, f in fields.items()}

    def pages(self) -> Iterator[PageLog]:
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT record, flags FROM pages WHERE expires_ms >= ? ORDER BY time_ms, "
                "request_id",
                (int(time.time() * 1000),),
            )
            for record, flags in rows:
                yield _page(record, flags)
        finally:
            conn.close()

    def set_available(self, item_ids: Iterable[str], available: bool) -> int:
        ids = [(i,) for i in item_ids]

        def write(conn: sqlite3.Connection) -> int:
            if available:
                conn.executemany("DELETE FROM unavailable WHERE item=?", ids)
            else:
                conn.executemany("INSERT OR IGNORE INTO unavailable (item) VALUES (?)", ids)
            (n,) = conn.execute("SELECT COUNT(*) FROM unavailable").fetchone()
            return int(n)

        total: int = self._write(write)
        return total

    def unavailable(self) -> frozenset[str]:
        rows = self._reader().execute("SELECT item FROM unavailable").fetchall()
        return frozenset(r[0] for r in rows)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()


def _apply(conn: sqlite3.Connection, updates: Sequence[ArmUpdate]) -> None:
    conn.executemany(
        "INSERT INTO arms (arm, field, value) VALUES (?, ?, ?) "
        "ON CONFLICT(arm, field) DO UPDATE SET value = value + excluded.value",
        [(u.arm, key, v) for u in updates for key, v in u.increments()],
    )


def _page(record: str, flags: str) -> PageLog:
    return PageLog.decode(record, (f for f in flags.split("\n") if f))


def _split(purposes: str) -> frozenset[str]:
    return frozenset(p for p in purposes.split(",") if p)
