"""An experiment's analysis from the event log: exposure decides who is counted and from
when, a planted lift is found with CUPED narrowing it, a broken split is flagged, and the
daily cumulative lift is there for the chart."""

from __future__ import annotations

from collections.abc import Collection, Iterator

import pytest

from tailored.experiments.analysis import Event, analyze, exposed_users
from tests.experiments.helpers import DAY, START_MS, event_log, experiment


def test_a_planted_lift_is_found_and_cuped_narrows_it() -> None:
    exp = experiment().get("ranker")
    result = analyze(exp, event_log(0.2), now_ms=START_MS + 8 * DAY)
    assert result["users"] == 4000 and result["srm"]["mismatch"] is False
    users = [result["variants"][v]["users"] for v in ("control", "treatment")]
    assert abs(users[0] - users[1]) < 200
    clicks = result["metrics"]["clicks"]["treatment"]
    fixed, plain = clicks["fixed"], clicks["plain"]
    assert clicks["cuped"] is True and fixed["variance_reduction"] > 0.2
    assert fixed["abs_se"] < plain["abs_se"]  # CUPED: a narrower interval
    assert fixed["significant"] and fixed["rel_ci"][0] < 0.2 < fixed["rel_ci"][1]
    assert clicks["sequential"]["significant"]
    ctr = result["metrics"]["ctr"]["treatment"]
    assert ctr["fixed"]["rel_lift"] > 0.1
    assert any(
        v.startswith("clicks per user, treatment: better than control") for v in result["verdicts"]
    )
    # impressions did not change
    assert not result["metrics"]["impressions"]["treatment"]["sequential"]["significant"]
    assert len(result["daily"]) == 8 and result["daily"][-1]["users"] == 4000
    assert result["daily"][0]["users"] < result["daily"][-1]["users"]


def test_no_lift_shows_no_difference() -> None:
    exp = experiment().get("ranker")
    result = analyze(exp, event_log(0.0, seed=3), now_ms=START_MS + 8 * DAY)
    for metric in ("clicks", "conversions", "impressions", "dwell"):
        assert not result["metrics"][metric]["treatment"].get("sequential", {}).get("significant")
    assert any(
        v.startswith("clicks per user, treatment: no difference shown yet")
        for v in result["verdicts"]
    )


def test_a_broken_split_is_flagged_first() -> None:
    exp = experiment().get("ranker")
    result = analyze(exp, event_log(0.0, drop=0.2), now_ms=START_MS + 8 * DAY)
    assert result["srm"]["mismatch"] is True
    assert result["verdicts"][0].startswith("SAMPLE RATIO MISMATCH")


def test_only_events_after_the_first_exposure_count() -> None:
    exp = experiment().get("ranker")
    log: list[Event] = []
    for i, variant in enumerate(["control", "treatment"] * 3):
        user = f"u{i}"
        log.append((user, "click", "x", START_MS, 0.0))  # before exposure: not counted
        log.append((user, "exposure", f"ranker:{variant}", START_MS + 10, 0.0))
        log.append((user, "exposure", "other:control", START_MS + 5, 0.0))  # another experiment
        log.append((user, "click", "x", START_MS + 20, 0.0))
        log.append((user, "exposure", "ranker:control", START_MS + 30, 0.0))  # a later one
    assert exposed_users(exp, log)["u1"] == ("treatment", START_MS + 10)
    result = analyze(exp, log, now_ms=START_MS + DAY)
    assert result["variants"]["treatment"]["users"] == 3
    clicks = result["metrics"]["clicks"]["treatment"]["plain"]
    assert clicks["mean_control"] == 1.0 and clicks["mean_treatment"] == 1.0
    # every user clicked once after exposure: no variance, no CUPED covariate...
    assert result["metrics"]["clicks"]["treatment"]["cuped"] is False


def test_a_streamed_log_gives_the_same_result_in_two_passes() -> None:
    """The analysis reads a log source twice (exposures, then the measured types) and keeps
    per-user sums only: the same figures as from the list."""
    log = event_log(0.1, users=1500, seed=3)
    exp = experiment().experiments[0]
    asked: list[frozenset[str] | None] = []

    def source(types: Collection[str] | None) -> Iterator[Event]:
        asked.append(None if types is None else frozenset(types))
        return (e for e in log if types is None or e[1] in types)

    now = START_MS + 8 * DAY
    streamed = analyze(exp, source, now_ms=now)
    # the figures counted here by hand from the log: clicks after each user's exposure
    exposed = {u: (item.split(":")[1], t) for u, kind, item, t, _ in log if kind == "exposure"}
    clicks: dict[str, list[int]] = {"control": [], "treatment": []}
    for user, (variant, at) in exposed.items():
        clicks[variant].append(
            sum(1 for u, kind, _, t, _ in log if u == user and kind == "click" and t >= at)
        )
    plain = streamed["metrics"]["clicks"]["treatment"]["plain"]
    assert plain["mean_control"] == pytest.approx(sum(clicks["control"]) / len(clicks["control"]))
    assert plain["mean_treatment"] == pytest.approx(
        sum(clicks["treatment"]) / len(clicks["treatment"])
    )
    assert streamed == analyze(exp, log, now_ms=now)
    assert asked == [
        frozenset({"exposure"}),
        frozenset({"click", "purchase", "view", "impression"}),
    ]


def test_a_verdict_never_contradicts_its_interval() -> None:
    """The absolute test may reject zero while the relative interval, which also carries the
    control mean's uncertainty, spans it: then no difference is claimed."""
    from tailored.experiments.analysis import _verdict, difference_shown

    def result(significant: bool, rel_ci: list[float]) -> dict[str, object]:
        return {
            "fixed": {"rel_lift": 0.446, "abs_lift": 0.01},
            "sequential": {"significant": significant, "rel_ci": rel_ci},
        }

    spans = result(True, [-0.063, 0.961])
    assert not difference_shown(spans)
    assert "no difference shown yet" in _verdict("conversions per user", "b", spans)
    clear = result(True, [0.15, 0.44])
    assert difference_shown(clear)
    assert "better than control" in _verdict("clicks per user", "b", clear)
    assert not difference_shown(result(False, [0.15, 0.44]))


def test_the_lift_by_segment_finds_where_it_is_and_states_the_caveat() -> None:
    from tailored.experiments.report import render_html

    lifted = event_log(0.4, users=3000, seed=1)
    flat = [("b" + e[0][1:], *e[1:]) for e in event_log(0.0, users=3000, seed=2)]
    segments = {e[0]: "1: Horror" for e in lifted} | {e[0]: "2: Drama" for e in flat}
    exp = experiment().experiments[0]
    result = analyze(exp, [*lifted, *flat], now_ms=START_MS + 8 * DAY, segments=segments)
    seg = result["segments"]
    assert seg["tests"] == 2 and "Bonferroni" in seg["caveat"]
    horror = seg["by_segment"]["1: Horror"]["variants"]["treatment"]
    drama = seg["by_segment"]["2: Drama"]["variants"]["treatment"]
    assert horror["significant_after_bonferroni"] and 0.25 < horror["rel_lift"] < 0.55
    assert abs(drama["rel_lift"]) < 0.1  # nothing planted (called or not: chance decides)
    for r in (horror, drama):  # called exactly below alpha / tests
        assert r["significant_after_bonferroni"] == (r["p_value"] < 0.05 / 2)
    users = seg["by_segment"]["1: Horror"]["users"]
    assert sum(users.values()) == len({e[0] for e in lifted})
    page = render_html(result)
    assert "By user segment" in page and "1: Horror" in page and "Bonferroni" in page
    assert analyze(exp, lifted, now_ms=START_MS + 8 * DAY)["segments"] is None


def test_page_modules_counts_each_variants_click_through_by_day() -> None:
    import numpy as np

    from tailored.experiments.analysis import PageRow, page_modules
    from tailored.experiments.report import render_html

    day = 86_400_000
    rng = np.random.default_rng(0)
    rows: list[PageRow] = []
    for i in range(4032):  # 144 pages a day, half each
        variant = ("fixed", "bandit")[(i // 14) % 2]
        p = 0.10 if variant == "fixed" else 0.15
        clicked = int(rng.binomial(5, p))
        user = f"u{i % 300}"
        rows.append((1_000 + (i % 14) * day, (f"layout:{variant}", "other:x"), 5, clicked, user))
    rows.append((1_000, ("unrelated:a",), 5, 5, "u0"))  # another experiment's: not counted
    out = page_modules("layout", rows)
    assert set(out["variants"]) == {"bandit", "fixed"}
    fixed, bandit = out["variants"]["fixed"], out["variants"]["bandit"]
    assert fixed["pages"] == bandit["pages"] == 2016 and fixed["modules_shown"] == 10_080
    assert fixed["ci"][0] < 0.10 < fixed["ci"][1] and bandit["ci"][0] < 0.15 < bandit["ci"][1]
    assert fixed["ci"][1] < bandit["ci"][0]  # 20,000 modules tell 10% from 15%
    assert [row["day"] for row in out["daily"]] == list(range(1, 15))
    assert sum(row["fixed"]["pages"] for row in out["daily"]) == 2016
    assert page_modules("nothing", rows) == {}
    result = {
        "experiment": "layout",
        "layer": "page",
        "status": "running",
        "users": 0,
        "days": 14.0,
        "now": "now",
        "alpha": 0.05,
        "srm": None,
        "variants": {},
        "verdicts": [],
        "control": "fixed",
        "metrics": {},
        "daily": [],
        "pages": out,
    }
    page = render_html(result)
    assert "Page modules" in page and page.count("<polyline") == 2
