"""An experiment's result from the event log: who was exposed to what, what they did after,
and the statistics of each variant against the control.

The input is the online state's events as ``(user, type, item_id, time_ms, value)`` (the
serving layer's ``OnlineState.scan``), read in two passes (:data:`EventSource`: the
exposures, then the measured types), so that memory grows with the exposed users, not with
the log. A user is in the analysis from their first exposure
to the experiment (an ``exposure`` event, item id ``EXPERIMENT:VARIANT``): their variant is
that exposure's, and only their events at or after it, and before the experiment's end (or
the decision that ended it), count (events before it, within ``pre_days``, are the CUPED
covariate of the same metric). The metrics, per exposed user:

- ``clicks`` per user, ``conversions`` (purchases) per user, ``dwell`` (seconds of views)
  per user, ``impressions`` per user, and ``<type>`` per user for each extra event type
  asked for: means, compared with Welch's test, CUPED-adjusted;
- ``ctr``: clicks over impressions, a ratio metric (delta method), for the users with at
  least one impression.

Each non-control variant is compared with the control at a fixed horizon and with the
always-valid sequential interval (:mod:`tailored.experiments.stats`); the users per variant
are checked against the declared weights (SRM). :func:`analyze` also gives the cumulative
lift of the first metric day by day, for the report's chart.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from tailored.experiments.config import Experiment
from tailored.experiments.stats import (
    DEFAULT_PLANNED_N,
    Comparison,
    clustered_se,
    compare_means,
    compare_ratios,
    srm_test,
)

__all__ = [
    "EXPOSURE",
    "MEAN_METRICS",
    "Event",
    "EventSource",
    "analyze",
    "difference_shown",
    "exposed_users",
    "page_modules",
    "per_user",
]

EXPOSURE = "exposure"
Event = tuple[str, str, str, int, float]  # user, type, item_id, time_ms, value
# metric -> (event type, what is summed: "count" or "value")
MEAN_METRICS: dict[str, tuple[str, str]] = {
    "clicks": ("click", "count"),
    "conversions": ("purchase", "count"),
    "dwell": ("view", "value"),
    "impressions": ("impression", "count"),
}
_DAY_MS = 86_400_000


# the event log, read in passes: called with the event types wanted (None: all), it returns
# a fresh iterable of them (an OnlineState's scan); a list of events serves as well
EventSource = Callable[[Collection[str] | None], Iterable[Event]]


@dataclass
class _User:
    variant: str
    exposed_ms: int
    after: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    before: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # clicks after exposure by day since the experiment's first exposure (0-based), for the
    # daily chart: a user holds a few numbers, never their events
    daily_clicks: dict[int, float] = field(default_factory=lambda: defaultdict(float))


def _source(events: Iterable[Event] | EventSource) -> EventSource:
    if callable(events):
        return events
    log = events if isinstance(events, Sequence) else list(events)
    return lambda types: log if types is None else (e for e in log if e[1] in types)


def exposed_users(experiment: Experiment, events: Iterable[Event]) -> dict[str, tuple[str, int]]:
    """Each exposed user's (variant, first exposure time in ms); exposures at or after the
    experiment's end (or the decision that ended it) do not count: a process that had not
    applied the decision yet may still have written some."""
    prefix = f"{experiment.name}:"
    names = {v.name for v in experiment.variants}
    end_ms = experiment.end.timestamp() * 1000
    first: dict[str, tuple[str, int]] = {}
    for user, kind, item, time_ms, _ in events:
        if kind != EXPOSURE or not item.startswith(prefix) or time_ms >= end_ms:
            continue
        variant = item[len(prefix) :]
        if variant in names and (user not in first or time_ms < first[user][1]):
            first[user] = (variant, time_ms)
    return first


def _users(
    experiment: Experiment, source: EventSource, extra_types: Sequence[str], pre_days: float
) -> dict[str, _User]:
    """Two passes over the log: the exposures, then the measured events of the exposed
    users, summed as they stream by (memory grows with the users, not the events)."""
    exposed = exposed_users(experiment, source({EXPOSURE}))
    users = {u: _User(v, t) for u, (v, t) in exposed.items()}
    first = min((u.exposed_ms for u in users.values()), default=0)
    measured = {**MEAN_METRICS, **{t: (t, "count") for t in extra_types}}
    by_type: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for metric, (kind, how) in measured.items():
        by_type[kind].append((metric, how))
    pre_ms = pre_days * _DAY_MS
    end_ms = experiment.end.timestamp() * 1000  # its end, or the decision that ended it
    for user, kind, _, time_ms, value in source(set(by_type)):
        u = users.get(user)
        if u is None or kind not in by_type or time_ms >= end_ms:
            continue
        for metric, how in by_type[kind]:
            amount = float(value) if how == "value" else 1.0
            if time_ms >= u.exposed_ms:
                u.after[metric] += amount
            elif time_ms >= u.exposed_ms - pre_ms:
                u.before[metric] += amount
        if kind == "click" and time_ms >= u.exposed_ms:
            u.daily_clicks[(time_ms - first) // _DAY_MS] += 1.0
    return users


def _arms(users: dict[str, _User], variant: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [u for u in users.values() if u.variant == variant]
    after = np.array([u.after.get(metric, 0.0) for u in rows], dtype=np.float64)
    before = np.array([u.before.get(metric, 0.0) for u in rows], dtype=np.float64)
    return after, before


def per_user(
    experiment: Experiment, events: Iterable[Event] | EventSource, metric: str
) -> dict[str, np.ndarray]:
    """Each variant's exposed users' ``metric`` (one of :data:`MEAN_METRICS`) after their
    first exposure, one value a user: what the comparisons are computed from."""
    users = _users(experiment, _source(events), (), 0.0)
    return {v.name: _arms(users, v.name, metric)[0] for v in experiment.variants}


def _fixed(
    y_c: np.ndarray, x_c: np.ndarray, y_t: np.ndarray, x_t: np.ndarray, alpha: float
) -> tuple[Comparison, bool]:
    """The fixed-horizon comparison of ``y`` (control, treatment), CUPED-adjusted by the
    pre-exposure ``x`` when it varies; and whether it was."""
    use_cuped = float(np.var(np.concatenate([x_c, x_t]))) > 0
    cmp = compare_means(
        y_c,
        y_t,
        alpha=alpha,
        covariate_control=x_c if use_cuped else None,
        covariate_treatment=x_t if use_cuped else None,
    )
    return cmp, use_cuped


def _compare(
    users: dict[str, _User],
    control: str,
    variant: str,
    metric: str,
    *,
    alpha: float,
    planned_n: int,
) -> dict[str, Any]:
    """Fixed-horizon (CUPED when the covariate varies) and sequential comparisons, or why
    there is none."""
    y_c, x_c = _arms(users, control, metric)
    y_t, x_t = _arms(users, variant, metric)
    if min(len(y_c), len(y_t)) < 2:
        return {"error": "fewer than 2 exposed users in an arm"}
    out: dict[str, Any] = {}
    try:
        fixed, use_cuped = _fixed(y_c, x_c, y_t, x_t, alpha)
        out["fixed"] = fixed.to_dict()
        out["plain"] = compare_means(y_c, y_t, alpha=alpha).to_dict()
        out["sequential"] = compare_means(
            y_c, y_t, alpha=alpha, sequential=True, planned_n=planned_n
        ).to_dict()
        out["cuped"] = use_cuped
    except ValueError as e:  # no variance at all (every user 0), say
        out = {"error": str(e)}
    return out


def _ratio(
    users: dict[str, _User], control: str, variant: str, *, alpha: float, planned_n: int
) -> dict[str, Any]:
    def arm(name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [u for u in users.values() if u.variant == name and u.after.get("impressions")]
        clicks = np.array([u.after.get("clicks", 0.0) for u in rows], dtype=np.float64)
        shown = np.array([u.after["impressions"] for u in rows], dtype=np.float64)
        return clicks, shown

    (nc, dc), (nt, dt_) = arm(control), arm(variant)
    if min(len(nc), len(nt)) < 2:
        return {"error": "fewer than 2 users with impressions in an arm"}
    try:
        return {
            "fixed": compare_ratios(nc, dc, nt, dt_, alpha=alpha).to_dict(),
            "sequential": compare_ratios(
                nc, dc, nt, dt_, alpha=alpha, sequential=True, planned_n=planned_n
            ).to_dict(),
        }
    except ValueError as e:
        return {"error": str(e)}


def difference_shown(result: dict[str, Any]) -> bool:
    """Whether a comparison shows a difference: the always-valid test of the absolute lift
    rejects zero and the always-valid interval of the relative lift leaves it out too (the
    relative one also carries the control mean's uncertainty; a verdict of "better" beside
    an interval that spans zero would contradict itself)."""
    if "error" in result:
        return False
    seq = result["sequential"]
    lo, hi = seq["rel_ci"]
    rel_excludes_zero = lo is None or hi is None or lo > 0 or hi < 0
    return bool(seq["significant"]) and rel_excludes_zero


def _verdict(metric: str, variant: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{metric}, {variant}: no result ({result['error']})"
    seq = result["sequential"]
    fixed = result["fixed"]
    lift = fixed["rel_lift"]
    lo, hi = seq["rel_ci"]
    if lift is None or lo is None or hi is None:
        return f"{metric}, {variant}: control is 0, no relative lift"
    span = f"{lift:+.1%} (always-valid 95% interval {lo:+.1%} to {hi:+.1%})"
    if difference_shown(result):
        word = "better" if fixed["abs_lift"] > 0 else "worse"
        return f"{metric}, {variant}: {word} than control, {span}"
    return f"{metric}, {variant}: no difference shown yet, {span}"


def analyze(
    experiment: Experiment,
    events: Iterable[Event] | EventSource,
    *,
    now_ms: int,
    extra_types: Sequence[str] = (),
    pre_days: float = 14.0,
    alpha: float = 0.05,
    planned_n: int = DEFAULT_PLANNED_N,
    srm_threshold: float = 0.001,
    segments: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The experiment's result as JSON values (see the module docstring); with
    ``segments`` (user -> segment label), also the lift in clicks per user within each
    segment (:func:`_by_segment`)."""
    users = _users(experiment, _source(events), extra_types, pre_days)
    names = [v.name for v in experiment.variants]
    counts = [sum(u.variant == n for u in users.values()) for n in names]
    srm = (
        srm_test(counts, list(experiment.weights), threshold=srm_threshold) if sum(counts) else None
    )
    metrics = [*MEAN_METRICS, *extra_types]
    results: dict[str, dict[str, Any]] = {m: {} for m in [*metrics, "ctr"]}
    verdicts = []
    for v in names:
        if v == experiment.control:
            continue
        for m in metrics:
            results[m][v] = _compare(
                users, experiment.control, v, m, alpha=alpha, planned_n=planned_n
            )
            verdicts.append(_verdict(f"{m} per user", v, results[m][v]))
        results["ctr"][v] = _ratio(users, experiment.control, v, alpha=alpha, planned_n=planned_n)
        verdicts.append(_verdict("CTR", v, results["ctr"][v]))
    if srm is not None and srm.mismatch:
        verdicts.insert(
            0,
            f"SAMPLE RATIO MISMATCH (p = {srm.p_value:.2g}): users per variant {counts} do not "
            f"match the weights {list(experiment.weights)}; the assignment or the logging is "
            "broken, and no result below can be trusted",
        )
    first = min((u.exposed_ms for u in users.values()), default=now_ms)
    return {
        "experiment": experiment.name,
        "layer": experiment.layer,
        "status": experiment.status(now_ms / 1000),
        "start": experiment.start.isoformat(),
        "end": experiment.end.isoformat(),
        "control": experiment.control,
        "now": dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).isoformat(),
        "days": max(0.0, (now_ms - first) / _DAY_MS),
        "variants": {
            n: {"weight": w, "users": c}
            for n, w, c in zip(names, experiment.weights, counts, strict=True)
        },
        "users": sum(counts),
        "srm": None if srm is None else srm.to_dict(),
        "alpha": alpha,
        "planned_n": planned_n,
        "pre_days": pre_days,
        "metrics": results,
        "verdicts": verdicts,
        "daily": _daily(users, experiment, first, now_ms, alpha=alpha, planned_n=planned_n),
        "segments": None if segments is None else _by_segment(users, experiment, segments, alpha),
    }


def _by_segment(
    users: dict[str, _User], experiment: Experiment, segments: Mapping[str, str], alpha: float
) -> dict[str, Any]:
    """Clicks per user, each variant against the control, within each user segment (fixed
    horizon, CUPED as for the whole). With S segments and V variants, S x V tests are made
    at once: a difference is called only where it passes Bonferroni's alpha / (S x V)."""
    by: dict[str, dict[str, _User]] = defaultdict(dict)
    for name, u in users.items():
        by[segments.get(name, "no segment")][name] = u
    variants = [v.name for v in experiment.variants if v.name != experiment.control]
    tests = max(1, len(by) * len(variants))
    out: dict[str, Any] = {}
    for label in sorted(by):
        members = by[label]
        counts = {
            v.name: sum(u.variant == v.name for u in members.values()) for v in experiment.variants
        }
        results: dict[str, Any] = {}
        row: dict[str, Any] = {"users": counts, "variants": results}
        for v in variants:
            y_c, x_c = _arms(members, experiment.control, "clicks")
            y_t, x_t = _arms(members, v, "clicks")
            if min(len(y_c), len(y_t)) < 2:
                results[v] = {"error": "fewer than 2 users in an arm"}
                continue
            try:
                cmp, _ = _fixed(y_c, x_c, y_t, x_t, alpha)
            except ValueError as e:  # no variance at all
                results[v] = {"error": str(e)}
                continue
            c = cmp.to_dict()
            results[v] = {
                "rel_lift": c["rel_lift"],
                "rel_ci": c["rel_ci"],
                "p_value": c["p_value"],
                "significant_after_bonferroni": bool(cmp.p_value < alpha / tests),
            }
        out[label] = row
    return {
        "metric": "clicks per user",
        "tests": tests,
        "caveat": f"{tests} comparisons at once: at alpha {alpha:g}, about {tests * alpha:.1f} "
        "would show a difference by chance alone, so a segment's lift is a hypothesis to test, "
        f"not a finding; one is called only below p = {alpha / tests:.2g} (Bonferroni)",
        "by_segment": out,
    }


def _daily(
    users: dict[str, _User],
    experiment: Experiment,
    first: int,
    now_ms: int,
    *,
    alpha: float,
    planned_n: int,
) -> list[dict[str, Any]]:
    """Clicks per user, cumulative: at the end of each day since the first exposure, the
    users exposed by then and their clicks by then, each variant against the control."""
    out: list[dict[str, Any]] = []
    days = max(1, math.ceil((now_ms - first) / _DAY_MS))
    for day in range(1, days + 1):
        cut = first + day * _DAY_MS
        seen = {}
        for name, u in users.items():
            if u.exposed_ms >= cut:
                continue
            clicks = sum(n for d, n in u.daily_clicks.items() if d < day)
            seen[name] = _User(u.variant, u.exposed_ms, after={"clicks": clicks})
        row: dict[str, Any] = {"day": day, "users": len(seen)}
        for v in experiment.variants:
            if v.name == experiment.control:
                continue
            got = _compare(
                seen, experiment.control, v.name, "clicks", alpha=alpha, planned_n=planned_n
            )
            if "error" not in got:
                row[v.name] = {
                    "rel_lift": got["plain"]["rel_lift"],
                    "rel_ci": got["sequential"]["rel_ci"],
                    "fixed_rel_ci": got["plain"]["rel_ci"],
                    "significant": difference_shown(got),
                    "fixed_significant": got["plain"]["significant"],
                }
        out.append(row)
    return out


# a logged page: its time (ms), the user's variants there ("EXPERIMENT:VARIANT"), the modules
# it showed, how many of them had a click, and the user (the interval clusters by user)
PageRow = tuple[int, Sequence[str], int, int, str]


def page_modules(experiment: str, pages: Iterable[PageRow], alpha: float = 0.05) -> dict[str, Any]:
    """The module click-through of each of ``experiment``'s variants on the pages it served
    (a module clicked when any of its items was; per variant, clicked modules over modules
    shown, with an interval by the delta method, clustered by user), overall and by day since
    its first page; ``{}`` when no page names the experiment. The per-user analysis
    (:func:`analyze`) is what decides."""
    prefix = f"{experiment}:"
    rows: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    users: dict[str, list[str]] = defaultdict(list)
    for time_ms, variants, shown, clicked, user in pages:
        for tag in variants:
            if tag.startswith(prefix):
                rows[tag[len(prefix) :]].append((int(time_ms), int(shown), int(clicked)))
                users[tag[len(prefix) :]].append(user)
    if not rows:
        return {}
    start = min(t for r in rows.values() for t, _, _ in r)
    z = float(special.ndtri(1 - alpha / 2))
    out: dict[str, Any] = {"variants": {}, "daily": []}
    daily: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for variant, r in sorted(rows.items()):
        a = np.array(r, np.float64)
        n_shown, n_clicked = a[:, 1], a[:, 2]
        ctr = float(n_clicked.sum() / max(n_shown.sum(), 1.0))
        resid = (n_clicked - ctr * n_shown) / max(float(n_shown.mean()), 1e-12)
        half = z * clustered_se(resid, users[variant]) if len(r) > 1 else float("nan")
        out["variants"][variant] = {
            "pages": len(r),
            "users": len(set(users[variant])),
            "modules_shown": int(n_shown.sum()),
            "clicked_modules": int(n_clicked.sum()),
            "clicked_modules_per_page": float(n_clicked.mean()),
            "click_through": ctr,
            "ci": [ctr - half, ctr + half],
        }
        for t, n, c in r:
            cell = daily[(t - start) // _DAY_MS][variant]
            cell[0] += 1
            cell[1] += n
            cell[2] += c
    for day in sorted(daily):
        row: dict[str, Any] = {"day": int(day) + 1}
        for variant, (n_pages, n, c) in daily[day].items():
            row[variant] = {"pages": n_pages, "click_through": c / n if n else None}
        out["daily"].append(row)
    return out
