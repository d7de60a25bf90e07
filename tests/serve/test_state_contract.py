"""One contract for every OnlineState backend (SQLite, Redis), then what is Redis's own.

The Redis cases need a server (the ``redis_url`` fixture: skipped without one, failed where
``TAILORED_REQUIRE_REDIS=1``); each test works under its own key prefix and deletes it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from tailored.errors import TailoredError
from tailored.serve.redis_state import RedisState
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.state import (
    PERSONALIZATION,
    OnlineState,
    RecordResult,
    StoredEvent,
    UserState,
    open_state,
    tombstone,
)
from tests.serve.conftest import Opener
from tests.serve.helpers import with_prefix


def ev(item: str, time_ms: int, type: str = "click", value: float = 0.0) -> StoredEvent:
    return StoredEvent(item, type, time_ms, value)


# -- the contract ----------------------------------------------------------------------------
def test_events_oldest_first_ties_in_arrival_order(state: OnlineState) -> None:
    first = [ev("a", 200), ev("b", 100), ev("c", 200), ev("d", 100)]
    assert state.record({"u": first}, default_allows=True) == RecordResult(4, 0)
    assert state.record({"u": [ev("e", 100)]}, default_allows=True) == RecordResult(1, 0)
    got = state.user("u", 10)
    assert [e.item_id for e in got.events] == ["b", "d", "e", "a", "c"]
    assert got.events[0] == ev("b", 100)


def test_scan_returns_every_kept_event_by_user_then_time(state: OnlineState) -> None:
    state.record(
        {"b": [ev("x", 20), ev("exp:one", 10, "exposure")], "a": [ev("y", 5), ev("z", 1)]},
        default_allows=True,
    )
    state.record({"c": [ev("w", 3)]}, default_allows=False)  # dropped: no consent
    assert list(state.scan()) == [
        ("a", ev("z", 1)),
        ("a", ev("y", 5)),
        ("b", ev("exp:one", 10, "exposure")),
        ("b", ev("x", 20)),
    ]
    assert list(state.scan({"exposure"})) == [("b", ev("exp:one", 10, "exposure"))]
    assert list(state.scan(())) == []
    state.forget("a")
    assert [u for u, _ in state.scan()] == ["b", "b"]


def test_limit_returns_the_most_recent(state: OnlineState) -> None:
    state.record({"u": [ev(f"i{t}", t) for t in range(10)]}, default_allows=True)
    assert [e.time_ms for e in state.user("u", 3).events] == [7, 8, 9]
    assert [e.time_ms for e in state.user("u", 1).events] == [9]
    assert [e.time_ms for e in state.user("u", 100).events] == list(range(10))
    assert state.user("u", 0).events == ()


def test_out_of_order_events_come_back_sorted_by_time(state: OnlineState) -> None:
    for t in (500, 100, 300, 400, 200):
        state.record({"u": [ev(f"i{t}", t)]}, default_allows=True)
    assert [e.time_ms for e in state.user("u", 10).events] == [100, 200, 300, 400, 500]
    assert [e.time_ms for e in state.user("u", 2).events] == [400, 500]


def test_consent_is_none_by_default(state: OnlineState) -> None:
    assert state.user("nobody", 10) == UserState(consent=None, events=())
    state.record({"u": [ev("a", 1)]}, default_allows=True)
    assert state.user("u", 10).consent is None


def test_default_allows_decides_for_users_without_consent(state: OnlineState) -> None:
    batch = {"a": [ev("x", 1), ev("y", 2)], "b": [ev("z", 3)]}
    assert state.record(batch, default_allows=False) == RecordResult(0, 3)
    assert state.user("a", 10).events == () and state.user("b", 10).events == ()
    assert state.record(batch, default_allows=True) == RecordResult(3, 0)
    assert state.user("a", 10).events == (ev("x", 1), ev("y", 2))
    assert state.user("b", 10).events == (ev("z", 3),)


def test_stated_consent_overrides_the_default(state: OnlineState) -> None:
    state.set_consent("yes", {PERSONALIZATION})
    state.set_consent("no", {"analytics"})
    batch = {"yes": [ev("a", 1), ev("b", 2)], "no": [ev("c", 3)], "unknown": [ev("d", 4)]}
    assert state.record(batch, default_allows=False) == RecordResult(2, 2)
    assert state.record(batch, default_allows=True) == RecordResult(3, 1)
    assert len(state.user("yes", 10).events) == 4
    assert state.user("no", 10).events == ()
    assert state.user("unknown", 10).events == (ev("d", 4),)


def test_withdrawing_personalization_forgets_and_drops(state: OnlineState) -> None:
    state.record({"u": [ev("a", 1), ev("b", 2), ev("c", 3)]}, default_allows=True)
    state.record({"v": [ev("a", 1)]}, default_allows=True)
    assert state.set_consent("u", {"analytics"}) == 3
    assert state.user("u", 10) == UserState(frozenset({"analytics"}), (), forgotten=True)
    assert not state.user("v", 10).forgotten
    assert state.record({"u": [ev("d", 4)]}, default_allows=True) == RecordResult(0, 1)
    assert state.user("u", 10).events == ()
    assert state.set_consent("u", set()) == 0
    assert state.user("v", 10).events == (ev("a", 1),)  # someone else's stay


def test_granting_personalization_allows_and_keeps(state: OnlineState) -> None:
    state.set_consent("u", set())
    assert state.set_consent("u", {PERSONALIZATION}) == 0
    assert state.record({"u": [ev("a", 1)]}, default_allows=False) == RecordResult(1, 0)
    assert state.set_consent("u", {PERSONALIZATION, "analytics"}) == 0
    # the tombstone of the withdrawal stays: what a bundle held of them is not theirs again
    assert state.user("u", 10) == UserState(
        frozenset({PERSONALIZATION, "analytics"}), (ev("a", 1),), forgotten=True
    )


@pytest.mark.parametrize(
    "purposes",
    [frozenset(), frozenset({PERSONALIZATION}), frozenset({"ads", "analytics", PERSONALIZATION})],
)
def test_purposes_round_trip(state: OnlineState, purposes: frozenset[str]) -> None:
    state.set_consent("u", ["stale", "other"])
    state.set_consent("u", purposes)
    got = state.user("u", 10).consent
    assert got == purposes and got is not None  # empty is not "never set"
    assert state.user("u", 10).allows(PERSONALIZATION, default=True) is (
        PERSONALIZATION in purposes
    )


def test_forget_removes_everything_about_one_user(state: OnlineState) -> None:
    state.set_consent("u", {PERSONALIZATION, "analytics"})
    state.set_consent("v", {PERSONALIZATION})
    batch = {"u": [ev("a", 1), ev("b", 2)], "v": [ev("c", 3)]}
    assert state.record(batch, default_allows=False) == RecordResult(3, 0)
    removed = state.forget("u")
    assert removed == {"consent": 1, "consent_history": 1, "events": 2, "pages": 0}
    assert state.user("u", 10) == UserState(consent=None, events=(), forgotten=True)
    assert state.consent_history("u") == []
    assert state.user("v", 10) == UserState(frozenset({PERSONALIZATION}), (ev("c", 3),))
    nothing = {"consent": 0, "consent_history": 0, "events": 0, "pages": 0}
    assert state.forget("u") == nothing
    assert state.forget("never-seen") == nothing
    # forgotten means back to the default, and new events start afresh
    assert state.record({"u": [ev("d", 9)]}, default_allows=True) == RecordResult(1, 0)
    assert state.user("u", 10).events == (ev("d", 9),)


def test_availability(state: OnlineState) -> None:
    assert state.unavailable() == frozenset()
    assert state.set_available(["a", "b", "c"], False) == 3
    assert state.set_available(["b"], False) == 3  # already unavailable
    assert state.set_available(["a", "not-there"], True) == 2
    assert state.unavailable() == frozenset({"b", "c"})
    assert state.set_available([], False) == 2
    assert state.set_available(iter(["café-1", "x,y"]), False) == 4
    assert state.set_available(["b", "c", "café-1", "x,y"], True) == 0
    assert state.unavailable() == frozenset()


def test_fields_round_trip_exactly(state: OnlineState) -> None:
    odd_items = ["café-1", "a,b", "x:y:z", 'quote"s', "it's", "pipe|item", "back\\slash", "🎬"]
    events = [
        StoredEvent(item, kind, 1_700_000_000_000 + i, value, surface)
        for i, (item, kind, value, surface) in enumerate(
            zip(
                odd_items,
                ["impression", "click", "view", "rating", "purchase", "view", "click", "rating"],
                [4.5, 0.1 + 0.2, -1.25, 5e-324, 1e300, 0.0, 3.0, 12345.678901234567],
                ["home", "", "search/results", "日本", "a|b", "x,y", "q\"'", "detail:1"],
                strict=True,
            )
        )
    ]
    for user in ("plain", "user:with:colons", "p|pe,comma"):
        assert state.record({user: events}, default_allows=True) == RecordResult(8, 0)
        assert state.user(user, 100).events == tuple(events)
    got = state.user("plain", 100).events
    assert [type(e.value) for e in got] == [float] * 8
    assert [type(e.time_ms) for e in got] == [int] * 8


def test_concurrent_records_all_land(state: OnlineState) -> None:
    start = threading.Barrier(8)

    def worker(t: int) -> RecordResult:
        start.wait()
        total = RecordResult(0, 0)
        for i in range(50):  # all at the same time: the order is arrival order
            r = state.record(
                {"u": [ev(f"{t}-{i}", 1000)], f"own-{t}": [ev(str(i), i)]}, default_allows=True
            )
            total = RecordResult(total.accepted + r.accepted, total.dropped + r.dropped)
        return total

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [RecordResult(100, 0)] * 8
    got = [e.item_id for e in state.user("u", 1000).events]
    assert sorted(got) == sorted(f"{t}-{i}" for t in range(8) for i in range(50))
    for t in range(8):  # each thread's events in the order it recorded them
        assert [g for g in got if g.startswith(f"{t}-")] == [f"{t}-{i}" for i in range(50)]
        assert [e.item_id for e in state.user(f"own-{t}", 1000).events] == [
            str(i) for i in range(50)
        ]


def test_state_persists_across_close_and_reopen(reopen: Opener) -> None:
    first = reopen()
    first.record({"u": [ev("a", 2), ev("b", 1)], "v": [ev("c", 3)]}, default_allows=True)
    first.set_consent("v", {"analytics"})
    first.set_consent("w", set())
    first.set_available(["gone"], False)
    first.close()
    first.close()  # twice is fine
    with pytest.raises(TailoredError):
        first.record({"u": [ev("x", 1)]}, default_allows=True)
    with reopen() as second:
        assert second.user("u", 10) == UserState(None, (ev("b", 1), ev("a", 2)))
        assert second.user("v", 10) == UserState(frozenset({"analytics"}), (), forgotten=True)
        assert second.user("w", 10) == UserState(frozenset(), (), forgotten=True)
        assert second.unavailable() == frozenset({"gone"})
        # arrival order goes on after a reopen
        second.record({"u": [ev("d", 1)]}, default_allows=True)
        assert [e.item_id for e in second.user("u", 10).events] == ["b", "d", "a"]


@pytest.mark.parametrize("how", ["sqlite-url", "plain-path", "redis"])
def test_open_state_picks_backend(how: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if how == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        url = with_prefix(request.getfixturevalue("redis_url"), prefix)
        with open_state(url) as s:
            assert isinstance(s, RedisState) and s.backend == "redis" and s.prefix == prefix
            s.set_available(["x"], False)
            assert s.unavailable() == frozenset({"x"})
        return
    path = tmp_path / "sub" / "state.db"
    with open_state(f"sqlite:///{path}" if how == "sqlite-url" else str(path)) as s:
        assert isinstance(s, SQLiteState) and s.backend == "sqlite" and s.path == path
        s.set_available(["x"], False)
    assert path.exists()


# -- SQLite's own ----------------------------------------------------------------------------
def _open_and_record(path: str, barrier: Any, name: str) -> None:
    barrier.wait()  # every process opens the new file at the same moment
    with SQLiteState(Path(path)) as s:
        s.record({name: [ev("a", 1)]}, default_allows=True)


def test_processes_opening_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Worker processes and replicas open one file together; switching a new file to WAL
    # and creating the schema used to fail at once with "database is locked" (about one
    # round in ten of four processes), which took a whole multi-process server down.
    ctx = multiprocessing.get_context("fork")
    for round_ in range(20):
        path = tmp_path / f"{round_}.db"
        barrier = ctx.Barrier(4)
        procs = [
            ctx.Process(target=_open_and_record, args=(str(path), barrier, f"p{i}"))
            for i in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 4, f"round {round_}"
        with SQLiteState(path) as s:
            assert all(s.user(f"p{i}", 10).events == (ev("a", 1),) for i in range(4))


def _bytes_on_disk(path: Path) -> bytes:
    return b"".join(f.read_bytes() for f in sorted(path.parent.glob(path.name + "*")))


@pytest.mark.parametrize("how", ["forget", "withdraw"])
def test_sqlite_erasure_leaves_nothing_in_its_files(tmp_path: Path, how: str) -> None:
    # while the server runs: the write-ahead log's frames and the database's free pages
    # held erased events until something overwrote them
    path = tmp_path / "state.db"
    with SQLiteState(path) as s:
        s.record({"keeper": [ev(f"kept-{i}", i) for i in range(50)]}, default_allows=True)
        s.record(
            {"erased-user": [ev(f"erased-item-{i}", i) for i in range(300)]}, default_allows=True
        )
        assert len(s.user("erased-user", 1000).events) == 300  # a reader saw them
        assert b"erased-item-" in _bytes_on_disk(path)
        if how == "forget":
            assert s.forget("erased-user")["events"] == 300
        else:
            assert s.set_consent("erased-user", ["analytics"]) == 300
        on_disk = _bytes_on_disk(path)
        assert b"erased-item-" not in on_disk
        assert how == "withdraw" or b"erased-user" not in on_disk
        assert b"kept-49" in on_disk
        s.record({"keeper": [ev("after", 99)]}, default_allows=True)
        assert len(s.user("keeper", 1000).events) == 51


def test_sqlite_erasure_under_a_long_reader_neither_stalls_nor_gives_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a reader of an older snapshot (another process, a backup) blocks the log's truncation:
    # writes go on, and the truncation is retried in the background once it has left
    path = tmp_path / "state.db"
    with SQLiteState(path) as s:
        s.record(
            {"erased-user": [ev(f"erased-item-{i}", i) for i in range(100)]}, default_allows=True
        )
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 100
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="tailored.serve.sqlite_state"):
            assert s.forget("erased-user")["events"] == 100
            s.record({"keeper": [ev("kept", 1)]}, default_allows=True)
        # not the 10 s busy timeout at each write (a liveness bound, not a timing target)
        assert time.monotonic() - start < 5.0
        assert "still holds erased events" in caplog.text and "erased-user" not in caplog.text
        assert b"erased-item-" in _bytes_on_disk(path)  # the reader still sees them
        reader.execute("COMMIT")
        reader.close()
        deadline = time.monotonic() + 10.0
        while b"erased-item-" in _bytes_on_disk(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b"erased-item-" not in _bytes_on_disk(path)  # the retry, with no write to wait for
        assert s.user("keeper", 10).events == (ev("kept", 1),)


# -- Redis's own -----------------------------------------------------------------------------
@pytest.fixture
def redis_state(redis_url: str, redis_prefix: str) -> Iterator[RedisState]:
    s = RedisState.from_url(with_prefix(redis_url, redis_prefix), max_events_per_user=5)
    yield s
    s.close()


def _stream(url: str, prefix: str) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(f"{prefix}:events"))
        return [(f["user"], f["event"]) for _, f in entries]
    finally:
        client.close()


def test_redis_caps_events_per_user(
    redis_state: RedisState, redis_url: str, redis_prefix: str
) -> None:
    times = [7, 3, 9, 1, 8, 2, 6, 4]
    res = redis_state.record({"u": [ev(f"i{t}", t) for t in times]}, default_allows=True)
    assert res == RecordResult(8, 0)
    assert [e.time_ms for e in redis_state.user("u", 100).events] == [4, 6, 7, 8, 9]
    redis_state.record({"u": [ev("late", 0)], "v": [ev("v", 0)]}, default_allows=True)
    assert [e.time_ms for e in redis_state.user("u", 100).events] == [4, 6, 7, 8, 9]
    assert len(redis_state.user("v", 100).events) == 1
    # the shared log keeps every accepted event, in arrival order
    log = _stream(redis_url, redis_prefix)
    assert [u for u, _ in log] == ["u"] * 9 + ["v"]
    assert log[0][1] == '["i7","click",7,0.0,""]' and log[-1][1] == '["v","click",0,0.0,""]'


def test_redis_erasure_reaches_the_event_log(
    redis_state: RedisState, redis_url: str, redis_prefix: str
) -> None:
    batch = {"u": [ev("a", 1), ev("b", 2)], "v": [ev("c", 3)], "w": [ev("d", 4)]}
    redis_state.record(batch, default_allows=True)
    redis_state.record({"x": [ev("e", 5)]}, default_allows=False)  # dropped: not logged
    assert [u for u, _ in _stream(redis_url, redis_prefix)] == ["u", "u", "v", "w"]
    assert redis_state.forget("u")["events"] == 2
    assert redis_state.set_consent("v", ["analytics"]) == 1
    assert [u for u, _ in _stream(redis_url, redis_prefix)] == ["w"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:  # what is left of u and v: v's consent and its history, and both tombstones (hashes)
        keys = sorted(client.scan_iter(match=f"{redis_prefix}:*"))
    finally:
        client.close()
    p = redis_prefix
    graves = [f"{p}:forgotten:{tombstone(u)}" for u in ("u", "v")]
    kept = [f"{p}:events", f"{p}:consent:v", f"{p}:consent-log:v", f"{p}:ev:w", f"{p}:seq:w"]
    assert keys == sorted([*kept, *graves])


def test_redis_erasure_reaches_events_the_cap_dropped_from_serving(
    redis_state: RedisState, redis_url: str, redis_prefix: str
) -> None:
    # the cap (5) keeps u's 5 latest for serving; the log keeps all 8 until erasure
    redis_state.record({"u": [ev(f"i{t}", t) for t in range(8)]}, default_allows=True)
    redis_state.record({"w": [ev("d", 1)], "u": [ev("j", 0)]}, default_allows=True)
    assert [u for u, _ in _stream(redis_url, redis_prefix)] == ["u"] * 8 + ["w", "u"]
    assert len(redis_state.user("u", 100).events) == 5
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.zscore(f"{redis_prefix}:logged-users", "u") is not None
        assert redis_state.forget("u")["events"] == 9
        assert [u for u, _ in _stream(redis_url, redis_prefix)] == ["w"]
        assert not list(client.scan_iter(match=f"{redis_prefix}:*:u"))
        assert client.zscore(f"{redis_prefix}:logged-users", "u") is None
    finally:
        client.close()


def test_redis_drops_remembered_ids_once_the_log_has_dropped_them(
    redis_state: RedisState, redis_url: str, redis_prefix: str
) -> None:
    logged = f"{redis_prefix}:logged:u"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        redis_state.record({"u": [ev(f"i{t}", t) for t in range(8)]}, default_allows=True)
        assert client.zcard(logged) == 3
        time.sleep(0.01)  # the log's next ids fall in a later millisecond
        client.xtrim(f"{redis_prefix}:events", maxlen=0, approximate=False)
        redis_state.record({"u": [ev("late", 100)]}, default_allows=True)
        # the event the cap dropped now was logged before the trim: nothing left to remember
        assert client.zcard(logged) == 0
        redis_state.record({"u": [ev("later", 200)]}, default_allows=True)
        assert client.zcard(logged) == 0  # the dropped event's entry is gone from the log
        redis_state.record({"u": [ev(f"n{t}", 300 + t) for t in range(6)]}, default_allows=True)
        # dropped: i5-i7 (gone from the log), late, later and n0 (there): 3 remembered
        assert client.zcard(logged) == 3
    finally:
        client.close()


def test_redis_forgets_remembered_ids_of_users_who_do_not_come_back(
    redis_state: RedisState, redis_url: str, redis_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    users = f"{redis_prefix}:logged-users"
    try:
        redis_state.record({"u": [ev(f"i{t}", t) for t in range(8)]}, default_allows=True)
        time.sleep(0.01)  # u's log ids and v's fall in different milliseconds
        redis_state.record({"v": [ev(f"j{t}", t) for t in range(7)]}, default_allows=True)
        assert client.zcard(f"{redis_prefix}:logged:u") == 3
        assert client.zrange(users, 0, -1) == ["u", "v"]
        # the log drops u's entries (not v's); another user's Track sweeps u's set away
        entries = cast(list[tuple[str, Any]], client.xrange(f"{redis_prefix}:events", count=9))
        cut = entries[-1][0]
        client.xtrim(f"{redis_prefix}:events", minid=cut, approximate=False)
        redis_state.record({"w": [ev("x", 1)]}, default_allows=True)
        assert not client.exists(f"{redis_prefix}:logged:u")
        assert client.zrange(users, 0, -1) == ["v"]
        assert client.zcard(f"{redis_prefix}:logged:v") == 2
    finally:
        client.close()


def test_redis_url_prefix_and_errors(redis_url: str) -> None:
    with RedisState.from_url(redis_url) as s:
        assert isinstance(s, RedisState) and s.prefix == "tailored"
    s = RedisState.from_url(with_prefix(redis_url, "elsewhere"), stream_maxlen=10)
    assert s.prefix == "elsewhere" and s.stream_maxlen == 10
    s.close()
    with pytest.raises(TailoredError) as info:
        RedisState.from_url("redis://:s3cret@127.0.0.1:1/0?prefix=p")
    assert "127.0.0.1:1" in str(info.value) and "connect" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_the_sqlite_state_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Users' events: the database, its write-ahead log and a folder it creates are this
    account's only (they were created 0644 and 0755)."""
    import stat

    path = tmp_path / "serve" / "state.db"
    s = SQLiteState(path)
    try:
        s.record({"u": [ev("i1", 1_000)]}, default_allows=True)
        files = [path, *(p for p in path.parent.iterdir() if p.name.startswith("state.db-"))]
        assert len(files) >= 2  # the database and its -wal (and -shm)
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        s.close()


def test_consent_history_records_every_change_in_order(state: OnlineState) -> None:
    assert state.consent_history("u") == []
    state.set_consent("u", {PERSONALIZATION, "analytics"})
    state.set_consent("u", {"analytics"})  # a withdrawal erases events, not the history
    state.set_consent("u", {PERSONALIZATION})
    state.set_consent("v", set())
    got = state.consent_history("u")
    assert [c.purposes for c in got] == [
        frozenset({PERSONALIZATION, "analytics"}),
        frozenset({"analytics"}),
        frozenset({PERSONALIZATION}),
    ]
    assert [c.time_ms for c in got] == sorted(c.time_ms for c in got)
    assert abs(got[-1].time_ms - time.time() * 1000) < 60_000
    assert state.consents() == {"u": frozenset({PERSONALIZATION}), "v": frozenset()}


def test_purge_removes_every_event_before_the_bound_and_nothing_after(
    state: OnlineState,
) -> None:
    state.record(
        {"u": [ev("old", 1_000), ev("edge", 5_000), ev("new", 9_000)], "v": [ev("x", 2_000)]},
        default_allows=True,
    )
    removed = state.purge(5_000)
    assert removed["events"] == 2
    assert [e.item_id for e in state.user("u", 10).events] == ["edge", "new"]
    assert state.user("v", 10).events == ()
    assert sorted(e.item_id for _, e in state.scan()) == ["edge", "new"]
    assert state.purge(5_000)["events"] == 0


def test_rekey_moves_every_user_and_their_log_entries_once(state: OnlineState) -> None:
    from tailored.data.pseudonym import KeyMap, Pseudonymizer

    old_p, new_p = Pseudonymizer(b"o" * 32), Pseudonymizer(b"n" * 32)
    keys = KeyMap.of(["a", "b", "c"], old_p, new_p)
    a, b, c = (old_p(r) for r in "abc")
    state.record({a: [ev("x", 1), ev("y", 2)], b: [ev("z", 3)]}, default_allows=True)
    state.set_consent(b, {PERSONALIZATION, "analytics"})
    state.set_consent(c, set())  # consent and a tombstone, no events
    state.record({"stranger": [ev("w", 4)]}, default_allows=True)  # not in the map
    assert state.key_fingerprint() is None
    got = state.rekey(keys)
    assert got == {"users": 3, "unmapped_users": 1, "already": 0}
    assert state.key_fingerprint() == new_p.fingerprint
    assert [e.item_id for e in state.user(new_p("a"), 10).events] == ["x", "y"]
    assert state.user(a, 10) == UserState(consent=None, events=())
    assert state.user(new_p("b"), 10).consent == {PERSONALIZATION, "analytics"}
    assert [c.purposes for c in state.consent_history(new_p("b"))] == [
        frozenset({PERSONALIZATION, "analytics"})
    ]
    assert state.user(new_p("c"), 10).forgotten
    assert sorted(u for u, _ in state.scan()) == sorted(
        [new_p("a"), new_p("a"), new_p("b"), "stranger"]
    )
    # forgetting under the new name reaches what was logged under the old one
    assert state.forget(new_p("a"))["events"] == 2
    assert state.rekey(keys)["already"] == 1


def test_redis_rekey_moves_the_log_entries_too(
    redis_state: RedisState, redis_url: str, redis_prefix: str
) -> None:
    from tailored.data.pseudonym import KeyMap, Pseudonymizer

    old_p, new_p = Pseudonymizer(b"o" * 32), Pseudonymizer(b"n" * 32)
    redis_state.record({old_p("a"): [ev("x", 1), ev("y", 2)]}, default_allows=True)
    redis_state.rekey(KeyMap.of(["a"], old_p, new_p))
    assert [u for u, _ in _stream(redis_url, redis_prefix)] == [new_p("a"), new_p("a")]
    assert redis_state.forget(new_p("a"))["events"] == 2
    assert _stream(redis_url, redis_prefix) == []


def test_redis_purge_reaches_every_old_entry_of_a_long_log(
    redis_state: RedisState, redis_url: str, redis_prefix: str
) -> None:
    # 2,500 events, the cap keeps 5: the rest live in the log only, over several pages of it
    redis_state.record({"u": [ev(f"i{i}", 1_000 + i) for i in range(2_500)]}, default_allows=True)
    removed = redis_state.purge(1_000 + 2_498)
    assert removed["events"] + removed["log_only_events"] == 2_498
    assert [json.loads(e)[2] for _, e in _stream(redis_url, redis_prefix)] == [3_498, 3_499]


def test_rekey_carries_the_tombstone_of_an_erased_user(state: OnlineState) -> None:
    from tailored.data.pseudonym import KeyMap, Pseudonymizer

    old_p, new_p = Pseudonymizer(b"o" * 32), Pseudonymizer(b"n" * 32)
    state.record({old_p("a"): [ev("x", 1)]}, default_allows=True)
    state.forget(old_p("a"))  # nothing left of them but the tombstone
    state.rekey(KeyMap.of(["a"], old_p, new_p))
    assert state.user(new_p("a"), 10).forgotten
