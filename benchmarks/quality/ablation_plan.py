"""What every row of issue 20's ablation (:mod:`benchmarks.quality.ablation`) is scored on:
the site (the synthetic one generated at the command's sizes with its planted truth, or
MovieLens-100k), the baseline a row is judged against, the test users with their targets
and planted top 10 (:class:`Plan`), and a list's figures against them (:func:`row_metrics`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._paths import ROOT
from benchmarks.serving._bundle import KEY
from tailored.bundle.availability import NEVER, ItemWindows, item_windows
from tailored.config import Config
from tailored.data.interactions import Interactions
from tailored.data.movielens import fetch_movielens_100k
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.data.synth import generate_synthetic
from tailored.data.synth_truth import SynthTruth, load_truth, true_topk
from tailored.train.metrics import Csr, aggregate_metrics, per_user_metrics

__all__ = [
    "Base",
    "K",
    "Plan",
    "Site",
    "add_site_arguments",
    "first_test_times",
    "make_plan",
    "movielens_site",
    "overlap",
    "row_metrics",
    "synthetic_site",
]

K = 10
# the synthetic rows' fixed split, as shares of the site's span (see the ablation's doc)
_VALID_FROM, _TEST_FROM = 0.8, 0.9
_NO_TIME = np.iinfo(np.int64).max


# -- the baseline -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Base:
    """What a row is judged against: the baseline's configuration (this seed's) and data,
    whether the catalog has availability windows, and the baseline run's validations an
    epoch (0 until it has run)."""

    cfg: Config
    data: Interactions
    windows: bool
    val_checks: int = 0


# -- the site ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """A dataset and how every row reads it: its configuration file, the overrides every row
    shares (the dataset's path, the synthetic site's split), whether it has a planted truth,
    and what was generated (JSON)."""

    name: str
    config: Path
    dataset: Path
    overrides: dict[str, Any]
    truth: bool
    info: dict[str, Any] = field(default_factory=dict)


def add_site_arguments(p: argparse.ArgumentParser) -> None:
    """The synthetic site's sizes and seed, as :func:`synthetic_site` reads them."""
    p.add_argument("--users", type=int, default=20_000, help="the synthetic site's users")
    p.add_argument("--items", type=int, default=4_000, help="the synthetic site's items")
    p.add_argument("--events-per-user", type=float, default=30.0)
    p.add_argument("--new-items", type=float, default=0.2, help="share launched in the span")
    p.add_argument("--ended-items", type=float, default=0.05, help="share ending in the span")
    p.add_argument("--site-seed", type=int, default=0, help="the synthetic site's own seed")


def synthetic_site(args: argparse.Namespace, work: Path) -> Site:
    """The synthetic site at ``args``' sizes, generated into ``work`` (seconds at these
    sizes; the benchmark's own pseudonymization key), split at fixed times."""
    ds = work / "synthetic"
    s = generate_synthetic(
        ds,
        n_users=args.users,
        n_items=args.items,
        events_per_user=args.events_per_user,
        new_items=args.new_items,
        ended_items=args.ended_items,
        seed=args.site_seed,
        key=bytes.fromhex(KEY),
    )
    truth = load_truth(ds)
    split = {
        "data.split": "global_time",
        "data.valid_start": truth.t0 + round(_VALID_FROM * truth.span),
        "data.test_start": truth.t0 + round(_TEST_FROM * truth.span),
    }
    info = {
        "users": s.n_users,
        "items": s.n_items,
        "events_by_type": s.events_by_type,
        "events_per_user": args.events_per_user,
        "new_items": args.new_items,
        "ended_items": args.ended_items,
        "site_seed": args.site_seed,
        "split": split,
    }
    config = ROOT / "configs" / "synthetic.toml"
    return Site("synthetic", config, ds, {"data.dataset": str(ds), **split}, True, info)


def movielens_site() -> Site:
    ds = fetch_movielens_100k()
    config = ROOT / "configs" / "movielens-100k.toml"
    return Site("movielens", config, ds, {"data.dataset": str(ds)}, False)


# -- what every row is scored on --------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The baseline's test users and their targets, the same for every row and seed.

    ``users`` int64 [U], the users with test positives; ``relevant`` their test items
    (0-based); ``new_rows`` int64 [V], the indices into ``users`` of those with test
    positives of items launched in the test period, and ``new`` those items (0-based);
    ``new_open`` how many of them had launched by the user's request; ``truth`` int64
    [U, 10], the planted top 10 (0-based), or None; ``windows`` the catalog's, or None."""

    users: np.ndarray
    relevant: Csr
    new_rows: np.ndarray
    new: Csr
    new_open: int
    truth: np.ndarray | None
    windows: ItemWindows | None
    # planted-truth recall@10 of lists made from the planted model itself (synthetic only):
    # how far the planted tastes are within reach of what a model can know (see _references)
    references: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict[str, int]:
        return {
            "test_users": len(self.users),
            "test_positives": int(self.relevant.indices.size),
            "new_item_positives": int(self.new.indices.size),
            "new_item_users": len(self.new_rows),
            "new_item_positives_launched_by_the_request": self.new_open,
        }


def first_test_times(data: Interactions, users: np.ndarray) -> np.ndarray:
    """Each of ``users``' first test positive (unix s, int64 [U]): where
    :func:`build_requests` stamps their request."""
    test = data.split == TEST
    first = np.full(data.n_users, _NO_TIME)
    np.minimum.at(first, data.user[test], data.timestamp[test])
    return first[users]


def make_plan(site: Site, base: Base) -> Plan:
    """See :class:`Plan`. An item's launch is its catalog ``available_from`` (0 for one
    there all along), else its first sight in any event (:func:`item_windows`)."""
    data, d = base.data, base.cfg.data
    users = np.unique(data.user[data.split == TEST])
    tests = data.per_user((TEST,))
    now = first_test_times(data, users)
    begins = np.full(len(users), d.test_start) if d.split == "global_time" else now
    start, end = item_windows(site.dataset, int(data.timestamp.max()) + 1)
    launch = np.where(start == NEVER, _NO_TIME, start)
    new_rows, new_items, new_open = [], [], 0
    for row, u in enumerate(users):
        items = np.unique(tests[u])
        new = items[launch[items] >= begins[row]]
        if len(new):
            new_rows.append(row)
            new_items.append(new - 1)
            new_open += int((launch[new] <= now[row]).sum())
    windows = ItemWindows(start, end) if base.windows else None
    relevant = Csr.from_lists([tests[u] - 1 for u in users])
    rows = np.asarray(new_rows, np.int64)
    plan = Plan(users, relevant, rows, Csr.from_lists(new_items), new_open, None, windows)
    if not site.truth:
        return plan
    truth, references = _truth(site, data, users, now, windows)
    return replace(plan, truth=truth, references=references)


def _truth(
    site: Site, data: Interactions, users: np.ndarray, now: np.ndarray, windows: ItemWindows | None
) -> tuple[np.ndarray, dict[str, float]]:
    """The planted top 10 of ``users`` (0-based items, int64 [U, 10]): their tastes at the
    end of the span, over the items open at each request's time ``now`` int64 [U], their
    training and validation items left out; and the references' recall of it
    (:func:`_references`)."""
    seen = data.per_user((TRAIN, VALID))
    none = np.zeros(0, np.int64)
    exclude = [
        np.union1d(seen[u], windows.closed(float(t)) if windows is not None else none) - 1
        for u, t in zip(users, now, strict=True)
    ]
    planted = load_truth(site.dataset)
    # the windows are the truth's own (the catalog's), taken at each request's time
    truth = true_topk(planted, users, K, exclude=exclude, available_only=False)
    return truth, _references(planted, users, exclude, truth)


def _references(
    planted: SynthTruth, users: np.ndarray, exclude: list[np.ndarray], truth: np.ndarray
) -> dict[str, float]:
    """Planted-truth recall@10 of top 10s scored by parts of the planted model, over the
    same items as the truth (``exclude``: 0-based, per user): the item term ``b_i`` alone
    (the best non-personal list), each user's segment centroid (the best a model that knows
    only the profile's segment could do: gender x age band x region), and the user's own
    taste at the start of the span (all of it but the drift)."""
    v_t = np.ascontiguousarray(planted.item_factors.T)
    bias = np.asarray(planted.item_bias, np.float32)
    tastes = {
        "item_term_only": np.zeros((len(users), v_t.shape[0]), np.float32),
        "segment_centroid": planted.segment_centroids[planted.user_segment[users]],
        "taste_at_start": planted.user_taste_start[users],
    }
    out = {}
    for name, taste in tastes.items():
        scores = taste @ v_t + bias
        for row, items in enumerate(exclude):
            scores[row, items] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        out[name] = overlap(top, truth)
    return out


def overlap(top: np.ndarray, truth: np.ndarray) -> float:
    """The mean share of each row of ``truth`` int [U, k] that the same row of ``top`` holds."""
    hits = [len(np.intersect1d(a, b)) for a, b in zip(top, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def row_metrics(top: np.ndarray, plan: Plan, data: Interactions) -> dict[str, float]:
    """Recall@10, NDCG@10, item coverage@10, new-item recall@10 and planted-truth recall@10
    of ``top`` (0-based, int64 [U, 10], the rows of ``plan.users``); ``data``: the
    baseline's (the popularity the metrics read)."""
    pop = data.item_popularity((TRAIN,))[1:]
    m = aggregate_metrics(top, plan.relevant, (K,), pop, data.n_items)
    out = {name: m[f"{name}@{K}"] for name in ("recall", "ndcg", "itemcoverage")}
    if len(plan.new_rows):
        new = per_user_metrics(top[plan.new_rows], plan.new, (K,))[f"recall@{K}"]
        out["new_item_recall"] = float(new.mean())
    if plan.truth is not None:
        out["truth_recall"] = overlap(top, plan.truth)
    return out
