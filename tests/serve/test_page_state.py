"""The page log and the bandit's statistics, one contract for both online-state backends
(SQLite, Redis): logged pages come back with their feedback, feedback counts once, arm
statistics add up exactly under concurrent writers, erasure and expiry remove pages."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from tailored.experiments.bandit import ArmStats
from tailored.serve.state import (
    ArmUpdate,
    Feedback,
    OnlineState,
    PageLog,
    ShownModule,
    StoredEvent,
)

DAY_MS = 86_400_000


def page(rid: str, user: str = "u1", time_ms: int = 1000, policy: str = "bandit") -> PageLog:
    return PageLog(
        request_id=rid,
        user=user,
        time_ms=time_ms,
        page_type="home",
        policy=policy,
        learn=True,
        context={"bias": 1.0, "segment=ab:3": 1.0, "device=mobile phone": 1.0},
        modules=(
            ShownModule("for-you", 0, 0, 0.9, ("i1", "i2")),
            ShownModule("trending", 1, -1, 0.5, ()),
            ShownModule("horror", 2, 1, 1.0, ("i3",)),
        ),
    )


def test_a_logged_page_round_trips_with_its_feedback(state: OnlineState) -> None:
    logged = page("r1")
    state.log_pages([logged], {}, DAY_MS)
    back = state.page("r1")
    assert back == logged  # every field, no flags yet
    assert state.page("r-unknown") is None
    new = state.page_feedback(
        [
            Feedback("r1", "for-you", "click"),
            Feedback("r1", "for-you", "click"),  # twice in one call: once
            Feedback("r1", "horror", "impression"),
            Feedback("r-unknown", "for-you", "click"),  # no such page: skipped
        ]
    )
    assert new == 2
    back = state.page("r1")
    assert back is not None
    assert back.clicked == {"for-you"} and back.seen == {"horror"}
    assert state.page_feedback([Feedback("r1", "for-you", "click")]) == 0  # a retry


def test_arm_statistics_add_exactly_and_only_for_new_feedback(state: OnlineState) -> None:
    x = {"bias": 1.0, "position=0": 1.0, "segment=ab:3": 1.0}
    state.log_pages([page("r1")], {"r1": [ArmUpdate("home:for-you", x, a_weight=1.0)]}, DAY_MS)
    click = ArmUpdate("home:for-you", x, b_weight=1.0)
    state.page_feedback([Feedback("r1", "for-you", "click", click)])
    state.page_feedback([Feedback("r1", "for-you", "click", click)])  # a retry: not again
    stats = state.arms(["home:for-you", "home:never"])
    assert set(stats) == {"home:for-you"}
    got = stats["home:for-you"]
    assert got.a == ArmStats.outer(x)
    assert got.b == x
    assert got.a[("bias", "bias")] == 1.0 and got.b["bias"] == 1.0


def test_concurrent_updates_from_many_writers_all_land(state: OnlineState) -> None:
    x = {"bias": 1.0, "position=1": 1.0, "device=tv": 0.5}
    rids = [f"r{i}" for i in range(40)]
    state.log_pages([page(r) for r in rids], {}, DAY_MS)

    def one(rid: str) -> int:
        update = ArmUpdate("home:trending", x, a_weight=1.0, b_weight=1.0)
        return state.page_feedback([Feedback(rid, "trending", "click", update)])

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(one, rids)) == len(rids)
    got = state.arms(["home:trending"])["home:trending"]
    assert math.isclose(got.a[("bias", "bias")], 40.0)
    assert math.isclose(got.a[("device=tv", "device=tv")], 40 * 0.25)
    assert math.isclose(got.b["device=tv"], 40 * 0.5)


def test_erasure_and_withdrawal_remove_the_users_pages(state: OnlineState) -> None:
    state.log_pages([page("a1", "ua"), page("a2", "ua"), page("b1", "ub")], {}, DAY_MS)
    state.record({"ua": [StoredEvent("i1", "click", 1)]}, default_allows=True)
    state.forget("ua")
    assert state.page("a1") is None and state.page("a2") is None
    assert state.page("b1") is not None
    state.set_consent("ub", [])  # withdrawing personalization forgets them too
    assert state.page("b1") is None
    assert list(state.pages()) == []


def test_pages_expire_and_scan_in_time_order(state: OnlineState) -> None:
    state.log_pages([page("late", time_ms=3000), page("early", time_ms=1000)], {}, DAY_MS)
    assert [g.request_id for g in state.pages()] == ["early", "late"]
    state.log_pages([page("short", time_ms=2000)], {}, 50)
    time.sleep(0.2)
    assert state.page("short") is None
    assert [g.request_id for g in state.pages()] == ["early", "late"]


@pytest.mark.parametrize("kind", ["click", "impression"])
def test_feedback_kinds_are_kept_apart(state: OnlineState, kind: str) -> None:
    state.log_pages([page("r1")], {}, DAY_MS)
    assert state.page_feedback([Feedback("r1", "horror", kind)]) == 1
    back = state.page("r1")
    assert back is not None
    assert (back.clicked, back.seen) == (
        ({"horror"}, frozenset()) if kind == "click" else (frozenset(), {"horror"})
    )


def test_a_page_written_after_its_user_was_erased_is_not_kept(state: OnlineState) -> None:
    """The writer thread can lose the race with an erasure: a page served before it and
    written after is dropped, with what it would have taught."""
    now = int(time.time() * 1000)
    x = {"bias": 1.0}
    state.forget("ua")  # erased now...
    before, after = replace(page("a1", "ua"), served_ms=now - 60_000), page("a2", "ua")
    after = replace(after, served_ms=now + 60_000)  # ...served before it, and after it
    teach = {"a1": [ArmUpdate("home", x, a_weight=1.0)], "a2": [ArmUpdate("home", x, a_weight=1.0)]}
    assert state.log_pages([before, after], teach, DAY_MS) == 1
    assert state.page("a1") is None and state.page("a2") is not None
    assert state.arms(["home"])["home"].a[("bias", "bias")] == 1.0  # a2's only
    assert state.log_pages([page("b1", "ub")], {}, DAY_MS) == 1  # never erased: kept
